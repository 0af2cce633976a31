from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = ("Serve a FAKE OpenAI-compatible upstream (development and test tool: it echoes "
            "the last user message, with usage). Not a model.")

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=9100)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--delay-ms", type=float, default=0.0, help="Wait this long before answering.")

    def handle(self, *args, port, host, delay_ms, **options):
        from gateway.fake_upstream import serve

        self.stdout.write(f"Fake OpenAI-compatible upstream (dev/test tool) on http://{host}:{port}/v1")
        self.stdout.flush()
        serve(host, port, delay_ms)
