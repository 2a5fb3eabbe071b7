"""The nurse station channel: the station already shows ``rpm.alerts`` live, so "sending" is a receipt."""

from __future__ import annotations

from notify.errors import PermanentDeliveryError
from notify.model import ChannelSpec
from notify.router import Notification
from rpm_core.technical import TECHNICAL_METRIC


class NurseStationChannel:
    """A no-op with a receipt: the ward's station(s) received the alert from ``rpm.alerts`` itself."""

    def __init__(self, *, spec: ChannelSpec) -> None:
        self.spec = spec

    def recipient(self, note: Notification) -> str:
        """The ward whose station shows the alert."""
        return f"nurse station, ward {note.ward or 'unassigned'}"

    async def send(self, note: Notification) -> str:
        """Nothing to send: the receipt says where the nurses see it. A clinical alert of a patient on
        no ward of the roster is on no station's screen (each shows its own ward's patients): that
        is a failed delivery, not a receipt (``rpm watchdog`` tells the operators as well)."""
        if note.ward is None and any(a.metric != TECHNICAL_METRIC for a in note.alerts):
            raise PermanentDeliveryError(f"patient {note.patient} is on no ward of the roster: no nurse station "
                                         "shows this alert (add them to their ward in RPM_ROSTER)")
        return f"delivered via rpm.alerts to the nurse station of ward {note.ward or 'unassigned'}"
