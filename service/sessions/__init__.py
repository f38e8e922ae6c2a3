"""The use cases: a session's life (create, wake, sleep, status, delete), chat admission and
the one delivery attempt the API and the worker share (relay -> pod -> settle), holding a chat
for its reply, the tiers (archive, restore, bring bundles up to date) and the warm pool."""

from service.sessions.archiver import Archiver
from service.sessions.delivery import Claim, Deliveries, Outcome
from service.sessions.lifecycle import Sessions
from service.sessions.listing import public_session
from service.sessions.notices import Notices, release_all
from service.sessions.pool import WarmPool
from service.sessions.results import Result
from service.sessions.tiers import Tiers, sweep_kinds
from service.sessions.waiting import ReplyWaiter, requested_wait

__all__ = ["Archiver", "Claim", "Deliveries", "Notices", "Outcome", "ReplyWaiter", "Result",
           "Sessions", "Tiers", "WarmPool", "public_session", "release_all", "requested_wait",
           "sweep_kinds"]
