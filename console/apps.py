from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"

    def ready(self):
        # The live feed follows the request log: billing calls its listeners with every
        # flushed batch of rows (billing never imports console; the hook points this way).
        from billing import requestlog
        from console.live import prepare_rows

        register = getattr(requestlog, "on_written", None)
        if register is not None:
            register(prepare_rows)
