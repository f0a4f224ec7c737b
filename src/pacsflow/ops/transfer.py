"""transfer: copy what is missing between two Orthanc servers over REST, then verify each study."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pacsflow.config import ModalityConfig
from pacsflow.errors import (
    BadInput,
    ConfigError,
    NotFound,
    PacsflowError,
    ServerError,
    TransientError,
    Unreachable,
)
from pacsflow.identity import check_not_source
from pacsflow.ledger import DONE, FAILED, SKIPPED, Item, PlannedItem, RunInfo
from pacsflow.ops.base import Operation, Outcome, register
from pacsflow.ops.params import CloneParams, CopyParams, ForwardParams, TransferParams
from pacsflow.ops.servers import connect, preflight_node, preflight_server
from pacsflow.orthanc import Orthanc
from pacsflow.pacing import limiter_for, take
from pacsflow.selection import Selection, first_look, resolve
from pacsflow.stored import check_stored
from pacsflow.wording import plural, was_were

log = logging.getLogger("pacsflow")


class _LazyDimse:
    """pacsflow.dimse on first use: pynetdicom and pydicom take 0.6 s to import; most transfers are REST."""

    def __getattr__(self, name: str) -> Any:
        from pacsflow import dimse as module

        return getattr(module, name)


dimse = _LazyDimse()

STUDY, INSTANCE, PEER_STORE, DICOM_STORE, VERIFY = "study", "instance", "peer-store", "dicom-store", "verify"
ALREADY_COMPLETE = "already complete"
PEER_BATCH = 200  # instances per peer store request
DELETE_BATCH = 1000  # instances per bulk-delete request


def not_on_source(study: str, source: Orthanc) -> BadInput:
    return BadInput(f"the study is not on {source.display}", where=f"study {study}")


def accepted_destination(source: Orthanc, destination: Orthanc | ModalityConfig) -> None:
    """Refuse a destination that is the source itself (ConfigError). Two empty servers configured alike
    cannot be told apart yet: that is only logged, since nothing can be lost while the source is empty
    (forward checks again before each delete)."""
    verdict = check_not_source(source, destination)
    if verdict.same is None:
        log.info("cannot tell yet whether %s is the source: %s", destination.display, verdict.why)


def known_name(source: Orthanc, route: str, name: str, flag: str) -> str:
    """NAME as SOURCE spells it among its OrthancPeers (ROUTE /peers) or DicomModalities (/modalities),
    found whatever its case.

    Raises ConfigError listing the names SOURCE has, when none is NAME: a misspelt --peer or --modality
    stops the run at its start instead of failing each study.
    """
    found = source.get_json(route)
    names = [str(one) for one in found] if isinstance(found, list | dict) else []
    if name in names:
        return name
    same = [one for one in names if one.lower() == name.lower()]
    if len(same) == 1:
        return same[0]
    peers = route == "/peers"
    kind, setting = ("Orthanc peer", "OrthancPeers") if peers else ("DICOM modality", "DicomModalities")
    known = ", ".join(sorted(names)) if names else "none"
    raise ConfigError(
        f"{source.display} has no {kind} {name!r} (its {setting}: {known}); name one of them with {flag}"
    )


def source_modality_name(source: Orthanc, node: ModalityConfig) -> str:
    """The source Orthanc's name for a DICOM node among its DicomModalities (by AET, host and port).

    Raises ConfigError when the source has no such modality.
    """
    found = source.get_json("/modalities", expand="")
    hosts = {node.host, "localhost" if node.host == "127.0.0.1" else node.host}
    for name, info in found.items() if isinstance(found, dict) else []:
        if (info.get("AET"), int(info.get("Port", 0))) == (node.aet, node.port) and info.get("Host") in hosts:
            return name
    known = ", ".join(found) if found else "none"
    raise ConfigError(
        f"{source.display} has no DICOM modality {node.aet}@{node.host}:{node.port} "
        f"(its modalities: {known}); add it to DicomModalities or name one with --modality"
    )


def node_store(source: Orthanc, node: ModalityConfig, name: str, our_aet: str, instances: list[str]) -> None:
    """The source Orthanc C-STOREs INSTANCES to NODE (its modality NAME) in one synchronous job; each
    instance takes a token of the node's rate limit, as if we sent it ourselves.

    Raises Unreachable when the node is down, ServerError (transient) when the store failed otherwise.
    """
    take(limiter_for(node.name), len(instances))
    body = {"Resources": instances, "Synchronous": True}
    try:
        source.post_json(f"/modalities/{name}/store", body, retry=False)
    except ServerError as exc:
        raise store_failure(node, name, our_aet, exc) from None


def store_failure(node: ModalityConfig, name: str, our_aet: str, exc: ServerError) -> PacsflowError:
    """Why the source Orthanc's C-STORE to NODE failed: the node itself down (an outage: the run waits
    for it, Orthanc answering for it does not make it up), or a failure to retry with backoff."""
    try:
        dimse.echo(node, our_aet)
    except Unreachable as down:
        return down
    except PacsflowError:
        pass
    return ServerError(f"C-STORE to {name} failed: {exc}", status=exc.status, transient=True)


@register
class Transfer(Operation):
    """What the destination lacks, study by study: one item per study lists both sides, then one item per
    missing instance (or per batch sent by the source Orthanc itself), then one item verifies the study."""

    name = "transfer"
    unit = "items"
    Params: ClassVar[type[CopyParams]] = TransferParams
    p: CopyParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | CopyParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for a server or node that is not configured
        (or a node as the source)."""
        super().__init__(settings, params)
        workers = self.p.workers or settings.workers
        self.source = connect(settings, self.p.source, workers)
        self.via = self.p.via or ("dicom" if settings.is_modality(self.p.to) else "rest")
        # a DICOM node is reached through the source Orthanc's C-STORE and checked with our C-FIND
        self.node = settings.modality(self.p.to) if self.via == "dicom" else None
        self.destination = connect(settings, self.p.to, workers) if self.node is None else None
        #: the studies the selectors named, looked up at the start (None: plan looks)
        self._chosen: list[str] | None = None

    @property
    def peer(self) -> str | None:
        """The source Orthanc's name for the destination among its peers (with via peer)."""
        return self.p.peer

    @property
    def modality(self) -> str | None:
        """The source Orthanc's name for the destination node (a DICOM node)."""
        return self.p.modality

    def preflight(self) -> None:
        """Raises PreflightError or Unauthorized (a server or the node), ConfigError (the destination is
        the source; the source lacks the peer or the modality for it, or a --peer or --modality it does
        not have; the node refuses our C-FIND; a selector that names no study on the source)."""
        preflight_server(self.source)
        if self.node is not None:
            accepted_destination(self.source, self.node)
            preflight_node(self.node, self.settings.aet)
            # what the node holds is checked by our C-FIND: a node refusing it is said once, here
            dimse.check_find(self.node, self.settings.aet)
            if self.modality:
                self.remember("modality", known_name(self.source, "/modalities", self.modality, "--modality"))
            else:
                self.remember("modality", self._find_modality())  # remembered for resume
        else:
            assert self.destination is not None
            preflight_server(self.destination)
            accepted_destination(self.source, self.destination)
            if self.via == "peer" and self.peer:
                self.remember("peer", known_name(self.source, "/peers", self.peer, "--peer"))
            elif self.via == "peer":
                self.remember("peer", self._find_peer())  # remembered for resume
        self._chosen = first_look(self.source, self.p)
        if self._chosen is not None:
            self.remember("matched", len(self._chosen))

    def _find_modality(self) -> str:
        assert self.node is not None
        return source_modality_name(self.source, self.node)

    def _find_peer(self) -> str:
        """The source Orthanc's name for the destination among its OrthancPeers, matched by URL."""
        peers = self.source.get_json("/peers", expand="")
        wanted = self.destination.config.url.rstrip("/")
        for name, info in peers.items() if isinstance(peers, dict) else []:
            if str(info.get("Url", "")).rstrip("/") == wanted:
                return name
        known = ", ".join(peers) if peers else "none"
        raise ConfigError(
            f"{self.source.display} has no Orthanc peer with URL {wanted} (its peers: {known}); "
            "add it to OrthancPeers or name one with --peer"
        )

    def plan(self) -> Iterable[PlannedItem]:
        studies = self._chosen
        if studies is None:  # a query, every study, or a resume planning again
            studies = resolve(self.source, Selection.of(self.p), require_match=False)
            if not studies and getattr(self.p, "query", None):
                log.warning("the query matches no study on %s", self.source.display)
        for study in studies:
            yield PlannedItem(STUDY, f"s/{study}", {"study": study})

    def do(self, item: Item) -> Outcome:
        """Raises BadInput (the study gone from the source, an instance refused, a study not complete on
        the destination after its copies), Unreachable (a side down), or what the servers' answers raise.
        """
        if item.kind == STUDY:
            return self._plan_study(item.payload["study"])
        if item.kind == INSTANCE:
            return self._copy_instance(item.payload["id"])
        if item.kind == PEER_STORE:
            return self._peer_store(item.payload["ids"])
        if item.kind == DICOM_STORE:
            return self._dicom_store(item.payload["ids"])
        return self._verify_study(item.payload["study"])

    def _node_holdings(self, study: str) -> tuple[dict[str, str], set[str]]:
        """Source instance ID -> SOPInstanceUID, and the SOPInstanceUIDs the DICOM node holds."""
        assert self.node is not None
        try:
            instances = self.source.children("studies", study, "instances")
        except NotFound:
            raise not_on_source(study, self.source) from None
        sop = {one["ID"]: one.get("MainDicomTags", {}).get("SOPInstanceUID", "") for one in instances}
        study_uid = self.source.resource("studies", study)["MainDicomTags"]["StudyInstanceUID"]
        return sop, dimse.study_instance_uids(self.node, self.settings.aet, study_uid)

    def _plan_study(self, study: str) -> Outcome:
        """List the study on both sides: one copy item per missing instance, one verify item after them."""
        if self.node is not None:
            sop, held = self._node_holdings(study)
            missing = [instance for instance, uid in sop.items() if uid not in held]
            result = {"instances": len(sop), "present": len(sop) - len(missing)}
            if not missing:
                return Outcome(note=ALREADY_COMPLETE, result=result)
            children = [
                PlannedItem(DICOM_STORE, f"c/{study}/{n}", {"ids": missing[n : n + PEER_BATCH]}, phase=1)
                for n in range(0, len(missing), PEER_BATCH)
            ]
            children.append(PlannedItem(VERIFY, f"v/{study}", {"study": study}, phase=2))
            return Outcome(result=result, children=children)
        wanted = self.source.instance_ids_of("studies", study)
        if not wanted:
            raise not_on_source(study, self.source)
        present = set(self.destination.instance_ids_of("studies", study))
        missing = [instance for instance in wanted if instance not in present]
        result = {"instances": len(wanted), "present": len(wanted) - len(missing)}
        if not missing:  # both lists just read: the destination already holds the whole study
            return Outcome(note=ALREADY_COMPLETE, result=result)
        if self.via == "peer":
            children = [
                PlannedItem(PEER_STORE, f"p/{study}/{n}", {"ids": missing[n : n + PEER_BATCH]}, phase=1)
                for n in range(0, len(missing), PEER_BATCH)
            ]
        else:
            children = [
                PlannedItem(INSTANCE, f"i/{instance}", {"id": instance}, phase=1) for instance in missing
            ]
        children.append(PlannedItem(VERIFY, f"v/{study}", {"study": study}, phase=2))
        return Outcome(result=result, children=children)

    def _peer_store(self, instances: list[str]) -> Outcome:
        """The source Orthanc sends these instances to its peer itself (a synchronous job: its answer is its
        status); what arrived is checked by the study's verify item."""
        assert self.destination is not None
        take(self.destination.limiter, len(instances))  # each instance is one request to the destination
        try:
            self.source.post_json(
                f"/peers/{self.peer}/store", {"Resources": instances, "Synchronous": True}, retry=False
            )
        except ServerError as exc:
            try:  # the destination itself down is an outage: the run waits for it
                self.destination.ping()
            except Unreachable as down:
                raise down from None
            raise ServerError(
                f"peer store to {self.peer} failed: {exc}", status=exc.status, transient=True
            ) from None
        return Outcome(result={"sent": len(instances)})

    def _copy_instance(self, instance: str) -> Outcome:
        data = self.source.instance_file(instance)
        try:
            answer = self.destination.upload(data)
        except ServerError as exc:
            if exc.status == 400:
                # Orthanc's message may quote the file's tags: it goes where logs hide it
                raise BadInput(
                    "the destination rejected the instance", where=f"instance {instance}", detail=str(exc)
                ) from None
            raise
        stored = check_stored(answer, where=f"instance {instance}", expected_id=instance)
        return Outcome(status=DONE if stored else SKIPPED, nbytes=len(data))

    def _dicom_store(self, instances: list[str]) -> Outcome:
        """The source Orthanc C-STOREs these instances to the node (a synchronous job)."""
        assert self.node is not None and self.modality is not None
        node_store(self.source, self.node, self.modality, self.settings.aet, instances)
        return Outcome(result={"sent": len(instances)})

    def _verify_study(self, study: str) -> Outcome:
        if self.node is not None:
            sop, held = self._node_holdings(study)
            lacking = [uid for uid in sop.values() if uid not in held]
            if lacking:
                raise BadInput(
                    f"{self.node.display} holds {len(sop) - len(lacking)} of {plural(len(sop), 'instance')}",
                    where=f"study {study}",
                )
            return Outcome(result={"instances": len(sop)})
        wanted = set(self.source.instance_ids_of("studies", study))
        present = set(self.destination.instance_ids_of("studies", study))
        missing = wanted - present
        if missing:
            raise BadInput(
                f"the destination has {len(wanted) - len(missing)} of {plural(len(wanted), 'instance')}",
                where=f"study {study}",
            )
        return Outcome(result={"instances": len(wanted)})

    def finish(self, run: RunInfo) -> list[str]:
        tally = self.ledger.tally(run.id)

        def count(kind: str, *statuses: str) -> int:
            return sum(n for (k, status, _), n in tally.items() if k == kind and status in statuses)

        complete = sum(
            n for (kind, _, note), n in tally.items() if kind == STUDY and note == ALREADY_COMPLETE
        )
        copied = count(INSTANCE, DONE, SKIPPED) + sum(
            (item.result or {}).get("sent", 0)
            for kind in (PEER_STORE, DICOM_STORE)
            for item in self.ledger.items(run.id, DONE, kind=kind)
        )
        return [
            f"studies {count(STUDY, DONE, FAILED)}: verified {count(VERIFY, DONE) + complete}, "
            f"failed {count(VERIFY, FAILED) + count(STUDY, FAILED)}; instances copied {copied}, "
            f"failed {count(INSTANCE, FAILED) + count(PEER_STORE, FAILED)}; {run.bytes / 1e6:.1f} MB; "
            f"{plural(complete, 'study')} {was_were(complete)} complete already"
        ]

    def close(self) -> None:
        self.source.close()
        if self.destination is not None:
            self.destination.close()


@register
class Clone(Transfer):
    """Everything of the source, then (with the follower) each new instance as it arrives."""

    name = "clone"
    Params = CloneParams

    def plan(self) -> Iterable[PlannedItem]:
        for study in self.source.ids("studies"):
            yield PlannedItem(STUDY, f"s/{study}", {"study": study})


def instance_item(instance: str) -> PlannedItem:
    """A copy item for one instance (as the change feed names it)."""
    return PlannedItem(INSTANCE, f"i/{instance}", {"id": instance})


FORWARD, DELETE = "forward", "delete"


@dataclass
class _Members:
    """What one forwarded resource (a study or an instance) holds on the source."""

    sop: dict[str, str]  # Orthanc instance ID -> SOPInstanceUID
    study_uid: str
    study_id: str
    last_update: str  # when the study last gained an instance (Orthanc's UTC YYYYMMDDTHHMMSS)


class _ServerDestination:
    def __init__(self, server: Orthanc, source: Orthanc) -> None:
        self.server, self.source, self.display = server, source, server.display
        self.target: Orthanc | ModalityConfig = server  # what the source must not be
        self.remote = server.remote
        #: this destination stored as new an instance the source held: it has a database of its own.
        #: Proof that a change record both logs share cannot give: two fresh servers, one fed from the
        #: other within the same second, hold records alike field for field.
        self.proven_apart = False

    def holds(self, members: _Members) -> set[str]:
        return set(self.server.instance_ids_of("studies", members.study_id)) & members.sop.keys()

    def send(self, instances: list[str]) -> None:
        for instance in instances:
            answer = self.server.upload(self.source.instance_file(instance))
            try:
                if check_stored(answer, where=f"instance {instance}", expected_id=instance):
                    self.proven_apart = True  # one database would have answered AlreadyStored
            except BadInput as exc:  # which destination refused it matters with several
                raise BadInput(f"{self.display}: {exc.reason}", where=exc.where, detail=exc.detail) from None

    def close(self) -> None:
        self.server.close()


class _NodeDestination:
    def __init__(self, node: ModalityConfig, name: str, source: Orthanc, our_aet: str) -> None:
        self.node, self.name, self.source, self.our_aet, self.display = (
            node,
            name,
            source,
            our_aet,
            node.display,
        )
        self.target: Orthanc | ModalityConfig = node
        self.remote = node.name or node.display  # as pacsflow.dimse names it when it does not answer

    def holds(self, members: _Members) -> set[str]:
        found = dimse.study_instance_uids(self.node, self.our_aet, members.study_uid)
        return {instance for instance, uid in members.sop.items() if uid in found}

    def send(self, instances: list[str]) -> None:
        node_store(self.source, self.node, self.name, self.our_aet, instances)

    def close(self) -> None:
        pass


@register
class Forward(Operation):
    """Each study (or instance) the change feed announces goes to every destination, servers or DICOM
    nodes; its instances are deleted from the source only once every destination holds them."""

    name = "forward"
    unit = "items"
    remotes_per_item = True  # a destination that is down holds back only its own items (and deletes)
    Params = ForwardParams
    p: ForwardParams

    def __init__(self, settings: Any, params: Mapping[str, Any] | ForwardParams) -> None:
        """Raises ParamsError for bad parameters, ConfigError for a server or node that is not configured."""
        super().__init__(settings, params)
        workers = self.p.workers or settings.workers
        self.source = connect(settings, self.p.source, workers)
        self.level = "instances" if self.p.trigger == "new-instance" else "studies"
        names = self.p.modality_names
        self.destinations: dict[str, _ServerDestination | _NodeDestination] = {}
        for spec in self.p.to:
            if settings.is_modality(spec):
                node = settings.modality(spec)
                self.destinations[spec] = _NodeDestination(
                    node, names.get(spec, ""), self.source, settings.aet
                )
            else:
                self.destinations[spec] = _ServerDestination(connect(settings, spec, workers), self.source)

    def preflight(self) -> None:
        """Raises PreflightError or Unauthorized (the source or a destination), ConfigError (a destination
        is the source; the source lacks a DICOM modality for a node)."""
        preflight_server(self.source)
        for spec, destination in self.destinations.items():
            if isinstance(destination, _ServerDestination):
                preflight_server(destination.server)
                accepted_destination(self.source, destination.server)
                continue
            accepted_destination(self.source, destination.node)
            preflight_node(destination.node, self.settings.aet)
            dimse.check_find(destination.node, self.settings.aet)
            if not destination.name:
                destination.name = source_modality_name(self.source, destination.node)
                self.remember("modality_names", {**self.p.modality_names, spec: destination.name})

    def plan(self) -> Iterable[PlannedItem]:
        return []  # what to forward comes from the change feed

    def items_for(self, change: dict[str, Any]) -> list[PlannedItem]:
        """One forward item per destination and a delete item after them, keyed by the change: a study
        that changes again (a late series) is a new change with new items, not a duplicate key that the
        ledger would ignore. Destinations are numbered in keys: a URL may carry a password."""
        seq, resource = int(change["Seq"]), change["ID"]
        payload = {"id": resource, "seq": seq, "date": change.get("Date", "")}
        sends = [
            PlannedItem(FORWARD, f"f/{seq}/{resource}/{n}", {**payload, "to": spec})
            for n, spec in enumerate(self.destinations)
        ]
        return [*sends, PlannedItem(DELETE, f"d/{seq}/{resource}", payload, phase=1)]

    def item_remotes(self, item: Item) -> Collection[str] | None:
        if item.kind == FORWARD:
            return [self.source.remote, self.destinations[item.payload["to"]].remote]
        return None  # a delete asks every destination

    def _members(self, resource: str) -> _Members | None:
        try:
            if self.level == "studies":
                instances = self.source.children("studies", resource, "instances")
                sop = {one["ID"]: one.get("MainDicomTags", {}).get("SOPInstanceUID", "") for one in instances}
                study = self.source.resource("studies", resource)
            else:
                info = self.source.resource("instances", resource)
                sop = {resource: info.get("MainDicomTags", {}).get("SOPInstanceUID", "")}
                study = self.source.get_json(f"/instances/{resource}/study")
        except NotFound:
            return None
        tags = study.get("MainDicomTags", {})
        return _Members(sop, tags.get("StudyInstanceUID", ""), study["ID"], str(study.get("LastUpdate", "")))

    def do(self, item: Item) -> Outcome:
        """Raises TransientError (a destination lacks instances after the send; a delete that must wait),
        BadInput (a destination refused an instance), Unreachable, or what the remotes' answers raise."""
        members = self._members(item.payload["id"])
        if members is None or not members.sop:
            return Outcome(status=SKIPPED, note="no longer on the source")
        if item.kind == FORWARD:
            return self._forward(self.destinations[item.payload["to"]], members)
        return self._delete(item.payload, members)

    def _forward(self, destination: _ServerDestination | _NodeDestination, members: _Members) -> Outcome:
        missing = sorted(members.sop.keys() - destination.holds(members))
        if missing:
            destination.send(missing)
        lacking = members.sop.keys() - destination.holds(members)
        if lacking:
            raise TransientError(
                f"{destination.display} lacks {len(lacking)} of {plural(len(members.sop), 'instance')}"
            )
        return Outcome(result={"instances": len(members.sop), "copied": len(missing)})

    def _delete(self, payload: dict[str, Any], members: _Members) -> Outcome:
        """Delete the instances every destination holds, checked right now: what arrived since the forward
        items verified the study is not deleted with it."""
        for destination in self.destinations.values():
            if getattr(destination, "proven_apart", False):
                continue
            # Two empty servers configured alike could not be told apart at the start; now the source
            # holds this change, whose record only its own database has.
            verdict = check_not_source(self.source, destination.target, seq=payload.get("seq"))
            if verdict.same is None:
                raise TransientError(
                    f"cannot tell yet whether {destination.display} is the source; not deleted"
                )
        everywhere = set(members.sop)
        short = []
        for destination in self.destinations.values():
            held = destination.holds(members)
            if members.sop.keys() - held:
                short.append(destination.display)
            everywhere &= held
        self._delete_instances(sorted(everywhere))
        kept = len(members.sop) - len(everywhere)
        result = {"deleted": len(everywhere), "kept": kept}
        if not kept:
            return Outcome(result=result)
        changed_at = payload.get("date")
        if self.level == "studies" and changed_at and members.last_update >= changed_at:
            # The study gained instances after its change: Orthanc calls it stable again later, and the
            # items of that change send and delete the rest.
            return Outcome(
                result=result,
                note=f"{kept} kept: they arrived after the change; its next change forwards them",
            )
        raise TransientError(
            f"{kept} of {plural(len(members.sop), 'instance')} {'is' if kept == 1 else 'are'} not on "
            f"{', '.join(short)}; {'it stays' if kept == 1 else 'they stay'} on the source"
        )

    def _delete_instances(self, instances: list[str]) -> None:
        for n in range(0, len(instances), DELETE_BATCH):
            # Orthanc 1.10+; it ignores IDs already gone, so a retry after a partial delete is harmless
            self.source.post_json("/tools/bulk-delete", {"Resources": instances[n : n + DELETE_BATCH]})

    def finish(self, run: RunInfo) -> list[str]:
        tally = self.ledger.tally(run.id)
        sent = sum(n for (kind, status, _), n in tally.items() if kind == FORWARD and status == DONE)
        deleted = sum(n for (kind, status, _), n in tally.items() if kind == DELETE and status == DONE)
        failed = sum(n for (_, status, _), n in tally.items() if status == FAILED)
        what = "study" if self.level == "studies" else "instance"
        return [
            f"{plural(sent, 'copy')} sent, {plural(deleted, what)} deleted from the source, {failed} failed"
        ]

    def close(self) -> None:
        self.source.close()
        for destination in self.destinations.values():
            destination.close()
