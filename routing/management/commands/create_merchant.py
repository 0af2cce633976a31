from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from routing.services import merchant_create


class Command(BaseCommand):
    help = ("Create a merchant: an organization, its owner (username = EMAIL) and a management API "
            "token, printed as the last line of output (shown only now).")

    def add_arguments(self, parser):
        parser.add_argument("org_name")
        parser.add_argument("email")
        parser.add_argument("--password", help="Console password for the owner (no console login without one).")

    def handle(self, *args, org_name, email, password, **options):
        try:
            organization, user, secret = merchant_create(organization_name=org_name, email=email, password=password)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"Organization: {organization.name} (slug {organization.slug})")
        self.stdout.write(f"Owner: {user.username}" + ("" if password else " (no password set: use --password)"))
        self.stdout.write("Management API token (shown only now; send it as 'Authorization: Bearer <token>'):")
        self.stdout.write(secret)
