"""Carrying out an admission of the waiting room (videoqueue.room): the submit message of
every admitted job, and the one timer of a model whose quota opens with time alone.

Called wherever quota may have freed up: after a move freed a slot (the job store's
`on_slot_freed`), by a submit that asked for quota, by the model's timer (the admit task)
and by the recovery sweep for every room.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from videoqueue.room import ADMIT_BATCH, Admission, WaitingRoom

log = logging.getLogger("videoqueue.admission")

SendSubmit = Callable[[str], object]
"""Sends the submit message of an admitted job, now."""

SendAdmit = Callable[[str, str, float], object]
"""Sends the admit message of (provider, model) after a countdown (seconds)."""

# The admit message of a timer goes out at most this long before its time: a countdown is
# at least a second on some brokers, and Redis' one-minute window is exact to the ms.
_TIMER_SLACK_S = 0.05


class Admitter:
    """Admits waiting jobs and sends what that calls for."""

    def __init__(
        self, room: WaitingRoom, send_submit: SendSubmit, send_admit: SendAdmit, max_countdown_s: float
    ) -> None:
        self.room = room
        self.send_submit = send_submit
        self.send_admit = send_admit
        self.max_countdown_s = max_countdown_s

    def admit(self, provider: str, model: str) -> list[str]:
        """Admit the next waiting jobs of a model, as many as its quota allows, and send
        their submit messages; arm the model's timer when time alone opens it next.
        Returns the ids admitted."""
        admitted: list[str] = []
        while True:
            admission = self.room.admit(provider, model)
            self.carry_out(provider, model, admission)
            admitted.extend(admission.admitted)
            if len(admission.admitted) < ADMIT_BATCH:
                return admitted

    def carry_out(self, provider: str, model: str, admission: Admission, skip: str | None = None) -> None:
        """Send the submit message of each job `admission` admitted (but `skip`, the job of
        the submit that asked: it creates at once) and arm the timer it calls for."""
        for job_id in admission.admitted:
            if job_id != skip:
                self.send_submit(job_id)
        if admission.admitted:
            log.info(
                "admitted waiting jobs",
                extra={"provider": provider, "model": model, "count": len(admission.admitted)},
            )
        if admission.wake_at is not None:
            self.arm(provider, model, admission.wake_at)

    def arm(self, provider: str, model: str, at: float) -> None:
        """Make sure one admit message of the model runs at `at` (epoch s): none is sent
        when one is already due by then."""
        if self.room.arm_timer(provider, model, at):
            countdown = min(max(0.0, at - time.time()) + _TIMER_SLACK_S, self.max_countdown_s)
            self.send_admit(provider, model, countdown)
