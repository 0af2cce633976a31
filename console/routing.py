from django.urls import path

from console.consumers import LiveFeedConsumer

websocket_urlpatterns: list = [
    path("ws/console/live/", LiveFeedConsumer.as_asgi()),
]
