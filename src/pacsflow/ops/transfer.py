"""transfer: copy what is missing between two Orthanc servers over REST, then verify each study."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pacsflow.errors import BadInput, ConfigError, ServerError
from pacsflow.ledger import DONE, FAILED, SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.servers import connect, preflight_server

STUDY, INSTANCE, VERIFY = "study", "instance", "verify"


@register
class Transfer(Operation):
    name = "transfer"
    unit = "items"

    def __init__(self, settings: Any, params: dict[str, Any]) -> None:
        super().__init__(settings, params)
        workers = params.get("workers", settings.workers)
        self.source = connect(settings, params["from"], workers)
        self.destination = connect(settings, params["to"], workers)

    def preflight(self) -> None:
        if self.source.config.url == self.destination.config.url:
            raise ConfigError("source and destination are the same server")
        preflight_server(self.source)
        preflight_server(self.destination)

    def plan(self) -> Iterable[PlannedItem]:
        studies = self.params.get("studies") or self.source.ids("studies")
        for study in studies:
            yield PlannedItem(STUDY, f"s/{study}", {"study": study})

    def do(self, item: Item) -> Outcome:
        if item.kind == STUDY:
            return self._plan_study(item.payload["study"])
        if item.kind == INSTANCE:
            return self._copy_instance(item.payload["id"])
        return self._verify_study(item.payload["study"])

    def _plan_study(self, study: str) -> Outcome:
        """List the study on both sides: one copy item per missing instance, one verify item after them."""
        wanted = self.source.instance_ids_of("studies", study)
        if not wanted:
            raise BadInput(f"study {study} is not on {self.source.display}")
        present = set(self.destination.instance_ids_of("studies", study))
        children = [
            PlannedItem(INSTANCE, f"i/{instance}", {"id": instance}, phase=1)
            for instance in wanted
            if instance not in present
        ]
        children.append(PlannedItem(VERIFY, f"v/{study}", {"study": study}, phase=2))
        return Outcome(
            result={"instances": len(wanted), "present": len(wanted) - len(children) + 1}, children=children
        )

    def _copy_instance(self, instance: str) -> Outcome:
        data = self.source.instance_file(instance)
        try:
            answer = self.destination.upload(data)
        except ServerError as exc:
            if exc.status == 400:
                raise BadInput(f"instance {instance}: destination rejected it ({exc})") from None
            raise
        if answer.get("ID") != instance:
            raise BadInput(f"instance {instance}: destination stored it as {answer.get('ID')}")
        status = SKIPPED if answer.get("Status") == "AlreadyStored" else DONE
        return Outcome(status=status, nbytes=len(data))

    def _verify_study(self, study: str) -> Outcome:
        wanted = set(self.source.instance_ids_of("studies", study))
        present = set(self.destination.instance_ids_of("studies", study))
        missing = wanted - present
        if missing:
            raise BadInput(
                f"study {study}: destination has {len(wanted) - len(missing)} of {len(wanted)} instances"
            )
        return Outcome(result={"instances": len(wanted)})

    def finish(self, run: RunInfo) -> list[str]:
        tally = self.ledger.tally(run.id)

        def count(kind: str, *statuses: str) -> int:
            return sum(n for (k, status, _), n in tally.items() if k == kind and status in statuses)

        return [
            f"studies {count(STUDY, DONE, FAILED)}: verified {count(VERIFY, DONE)}, "
            f"failed {count(VERIFY, FAILED) + count(STUDY, FAILED)}; instances copied "
            f"{count(INSTANCE, DONE, SKIPPED)}, failed {count(INSTANCE, FAILED)}; {run.bytes / 1e6:.1f} MB"
        ]

    def close(self) -> None:
        self.source.close()
        self.destination.close()
