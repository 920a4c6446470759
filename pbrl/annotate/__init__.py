"""Human preference labels for real: ``pbrl annotate`` serves a local page (two segment videos side by side,
keys to answer, undo) and a JSON API, appending every answer to a labels file that ``pbrl data import-labels``
reads. See :mod:`pbrl.annotate.server` for the API."""

from pbrl.annotate.log import CHOICES, LabelLog, RequestError
from pbrl.annotate.queries import PAIRINGS, QuerySet, make_query_set, open_query_set, prepare_videos
from pbrl.annotate.server import DisagreementPicker, Session, make_server, serve, start_session

__all__ = ["CHOICES", "PAIRINGS", "DisagreementPicker", "LabelLog", "QuerySet", "RequestError", "Session",
           "make_query_set", "make_server", "open_query_set", "prepare_videos", "serve", "start_session"]
