"""populate: generate synthetic studies (R12) into a folder or straight into an Orthanc server."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pacsflow.dicomfiles import read_uids
from pacsflow.ledger import SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.params import PopulateParams
from pacsflow.ops.servers import connect, preflight_server
from pacsflow.stored import check_stored
from pacsflow.synthetic import Shape, instance_bytes, instance_keys, instance_path, write_bad_files
from pacsflow.wording import plural


@register
class Populate(Operation):
    """Synthetic instances, one item each, written into a folder or uploaded to a server."""

    name = "populate"
    unit = "instances"
    Params = PopulateParams
    p: PopulateParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | PopulateParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for a server that is not configured."""
        super().__init__(settings, params)
        self.shape = Shape(**self.p.shape.model_dump())
        self.out = Path(self.p.out) if self.p.out else None
        self.server = connect(settings, self.p.to, self.p.workers or settings.workers) if self.p.to else None

    def preflight(self) -> None:
        """Raises PreflightError or Unauthorized (the server), OSError (the folder cannot be made)."""
        if self.server is not None:
            preflight_server(self.server)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.p.bad_files:
                write_bad_files(self.out / "bad")

    def plan(self) -> Iterable[PlannedItem]:
        for key in instance_keys(self.shape):
            yield PlannedItem("instance", "/".join(map(str, key)), {"k": list(key)})

    def do(self, item: Item) -> Outcome:
        """Raises OSError (the folder), BadInput (the server refused the instance), or what the server's
        answers raise."""
        p, st, se, i = item.payload["k"]
        data = instance_bytes(self.shape, p, st, se, i)
        if self.out is not None:
            target = instance_path(self.out, self.shape, p, st, se, i)
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(target.name + ".part")
            temporary.write_bytes(data)
            os.replace(temporary, target)
            return Outcome(nbytes=len(data))
        assert self.server is not None
        expected = read_uids(data, item.key).instance_id
        if not check_stored(self.server.upload(data), where=item.key, expected_id=expected):
            return Outcome(status=SKIPPED, nbytes=len(data), note="already on server")
        return Outcome(nbytes=len(data))

    def finish(self, run: RunInfo) -> list[str]:
        where = str(self.out) if self.out else self.server.display if self.server else "?"
        shape = self.shape
        return [
            f"generated {plural(shape.total, 'instance')} ({plural(shape.patients, 'patient')}) into {where}"
        ]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
