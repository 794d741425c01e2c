"""Optuna under Tune: diverged trials FAIL with their reason; dead RUNNING trials FAIL on resume.

Ray's ``OptunaSearch`` tells Optuna the last value of every completed trial. A diverged trial
reports the worst value (so Tune's metric check and ASHA are satisfied); Optuna must not learn
from it, so :func:`make_searcher` tells it ``FAIL`` with the user attribute ``fail_reason``
(``"non-finite loss at search step 12"``), which optuna-dashboard shows on the trial.

A sweep that was killed leaves its running trials ``RUNNING`` in the study. On resume the trials
Tune continues keep theirs; every other ``RUNNING`` trial of the study is dead and is marked
``FAIL`` (reason ``interrupted``); at the end of a sweep that ran to completion none is left.
"""

from __future__ import annotations

import logging
from typing import Any, Optional
from nasfe.config import ConfigError

log = logging.getLogger("nasfe.sweep")

INTERRUPTED = "interrupted: the sweep stopped while this trial ran, and it was not resumed"


def fail_running(study, keep: set[int], reason: str = INTERRUPTED) -> list[int]:
    """Mark the study's RUNNING trials FAIL (except trial numbers in ``keep``); returns their numbers."""
    from optuna.trial import TrialState

    storage = study._storage  # noqa: SLF001  (the public Study has no attribute setter for a finished trial)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in keep:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)  # noqa: SLF001
            study.tell(t.number, state=TrialState.FAIL)
            failed.append(t.number)
        except Exception as exc:  # another process finished it meanwhile
            log.debug("optuna trial %d: %s", t.number, exc)
    if failed:
        log.info("Optuna study %s: marked %d dead RUNNING trial(s) FAIL: %s", study.study_name, len(failed), failed)
    return failed


def make_searcher(**kwargs):
    """An ``OptunaSearch`` (same arguments) that handles diverged and dead trials (see module doc)."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    class NasfeOptunaSearch(OptunaSearch):
        def on_trial_result(self, trial_id: str, result: dict):
            if result.get("diverged"):  # a worst-value stand-in, not a measurement
                return
            super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
            if not (result or {}).get("diverged") or trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result, error)
            ot_trial = self._ot_trials[trial_id]
            reason = str(result.get("diverged_reason") or "non-finite metrics")
            try:
                ot_trial.set_user_attr("fail_reason", reason)
                ot_trial.set_user_attr("diverged", True)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            except Exception as exc:  # the study must not stop the sweep
                log.warning("optuna: %s", exc)
            self._completed_trials.add(trial_id)

        def live_numbers(self) -> set[int]:
            """Optuna numbers of the trials Tune may still continue."""
            return {t.number for tid, t in self._ot_trials.items() if tid not in self._completed_trials}

        def restore(self, checkpoint_path: str):
            super().restore(checkpoint_path)
            fail_running(self._ot_study, self.live_numbers())

    return NasfeOptunaSearch(**kwargs)


def open_storage(url: Optional[str], where: str) -> Any:
    """An Optuna RDB storage for ``url`` (None: in memory); a bad URL is a one-line ConfigError."""
    if not url:
        return None
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # bad URL, missing driver, unwritable folder
        raise ConfigError(f"{where}: storage {url!r}: cannot open ({exc})") from None
