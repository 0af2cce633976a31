from cryptography.fernet import Fernet
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Print a new Fernet key for FIELD_ENCRYPTION_KEY (provider credentials at rest)."

    def handle(self, *args, **options):
        self.stdout.write(Fernet.generate_key().decode())
