"""The Graph API client every service shares: settings, one HTTP client, errors by code."""

from pagewire.graph.client import FACEBOOK, INSTAGRAM, GraphClient
from pagewire.graph.config import GraphSettings
from pagewire.graph.conversations import Conversation, ConversationsApi, ResultPage
from pagewire.graph.errors import GraphError
from pagewire.graph.pages import ManagedPage, PagesApi, RefreshedToken, SubscribedApp
from pagewire.graph.ratelimit import Clock

__all__ = [
    "FACEBOOK",
    "INSTAGRAM",
    "Clock",
    "Conversation",
    "ConversationsApi",
    "GraphClient",
    "GraphError",
    "GraphSettings",
    "ManagedPage",
    "PagesApi",
    "RefreshedToken",
    "ResultPage",
    "SubscribedApp",
]
