"""The nurse station channel: the station already shows ``rpm.alerts`` live, so "sending" is a receipt."""

from __future__ import annotations

from notify.model import ChannelSpec
from notify.router import Notification


class NurseStationChannel:
    """A no-op with a receipt: the ward's station(s) received the alert from ``rpm.alerts`` itself."""

    def __init__(self, *, spec: ChannelSpec) -> None:
        self.spec = spec

    def recipient(self, note: Notification) -> str:
        """The ward whose station shows the alert."""
        return f"nurse station, ward {note.ward or 'unassigned'}"

    async def send(self, note: Notification) -> str:
        """Nothing to send: the receipt says where the nurses see it."""
        return f"delivered via rpm.alerts to the nurse station of ward {note.ward or 'unassigned'}"
