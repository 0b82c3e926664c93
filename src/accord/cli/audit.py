"""`accord audit`: the ledger's key, checkpoints, export, offline verification and tail."""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from accord.cli.client import AccordClient, ClientError
from accord.cli.state import load_state
from accord.db import readonly_sessions, transaction
from accord.ledger import bundle, checkpoints
from accord.ledger.note import NoteError, Verifier
from accord.ledger.service import LedgerCorruption
from accord.ledger.verify import Report, verify
from accord.settings import Settings

audit_app = typer.Typer(help="The tamper-evident audit ledger.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="accord.yaml (default: $ACCORD_CONFIG).")
]


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _sign_now(st: Any) -> Any:
    """Sign the current tree if it grew; exit 1 if the signer refuses."""
    try:
        with transaction(st.sessions) as session:
            cp = checkpoints.sign(session, st.ledger, now=st.now(), force=True)
    except LedgerCorruption as exc:
        err.print(f"error: refusing to sign: {exc}", markup=False)
        raise typer.Exit(1) from None
    checkpoints.after_commit(st.ledger, cp)
    return cp


@audit_app.command("key")
def key(
    config: ConfigOpt = None,
    chain: Annotated[bool, typer.Option(
        "--chain", help="Every key that signed checkpoints, oldest first (the last is the "
                        "key in force); stderr says where each was retired.")] = False,
) -> None:
    """Print the verifier key that signs checkpoints (give it to auditors to pin)."""
    st = load_state(config, upgrade="never")
    ring = st.ledger.ring()
    if not chain:
        print(ring.signer.verifier.encode())
        return
    for epoch in ring.epochs():
        until = (f"retired by the checkpoint of size {epoch.until}" if epoch.until is not None
                 else "rotation under way: cosigns the next checkpoint"
                 if ring.previous is not None and epoch.verifier == ring.previous.verifier
                 else "in force")
        err.print(f"# {epoch.verifier.name} key {epoch.verifier.id.hex()}: {until}",
                  markup=False)
        print(epoch.verifier.encode())


@audit_app.command("rotate-key")
def rotate_key(
    reason: Annotated[str, typer.Option(
        "--reason", help="Why (recorded in the ledger event), e.g. 'yearly' or "
                         "'suspected compromise, INC-42'.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Make a new checkpoint signing key. The next checkpoint is signed by the old and the
    new key (printed: pin it), later ones by the new key; old keys stay in the key file.
    Running processes pick the new key up by themselves. Run it again to finish a rotation
    that was interrupted."""
    from accord.ledger import rotation  # only this command needs it
    from accord.ledger.events import Actor, Via

    st = load_state(config, upgrade="never")
    try:
        done = rotation.rotate(st.sessions, st.ledger, now=st.now, reason=reason,
                               actor=Actor("system", "accord-cli", Via.CLI))
    except LedgerCorruption as exc:
        err.print(f"error: not rotating: {exc}", markup=False)
        raise typer.Exit(1) from None
    except NoteError as exc:
        err.print(f"error: the key file {st.ledger.key_path}: {exc}", markup=False)
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"error: cannot write the key file {st.ledger.key_path}: {exc}",
                  markup=False)
        raise typer.Exit(1) from None
    what = "finished the rotation begun earlier" if done.resumed else "rotated the key"
    err.print(f"{what}: the checkpoint of size {done.size} is signed by the old key "
              f"{done.old.encode()} and the new key {done.new.encode()}; later checkpoints "
              f"by the new key alone. Give auditors the new key (`accord audit key`) and "
              f"this checkpoint to pin:", markup=False, soft_wrap=True)
    print(done.checkpoint, end="")


@audit_app.command("checkpoint")
def checkpoint(config: ConfigOpt = None) -> None:
    """Sign the current tree now (if it grew) and print the latest checkpoint."""
    st = load_state(config, upgrade="never")
    cp = _sign_now(st)
    if cp is not None:
        print(cp.note, end="")


@audit_app.command("accept-restore")
def accept_restore(
    reason: Annotated[str, typer.Option(
        "--reason", help="Why the loss is accepted (recorded in the ledger event), e.g. "
                         "'restored the 02:00 backup after the disk failed, INC-7'.")],
    config: ConfigOpt = None,
) -> None:
    """After a restore from an older backup: record in the ledger that the entries after
    it are lost, and let the signer continue from the restored tree. Refused unless the
    restored ledger is whole (and matches the witness copies it covers)."""
    from accord.ledger import recovery  # only this command needs it
    from accord.ledger.events import Actor, Via

    st = load_state(config, upgrade="never")
    try:
        done = recovery.accept_restore(st.sessions, st.ledger, now=st.now, reason=reason,
                                       actor=Actor("system", "accord-cli", Via.CLI))
    except recovery.NothingToAccept:
        err.print("nothing to accept: the ledger extends the checkpoint kept beside the key",
                  markup=False)
        return
    except LedgerCorruption as exc:
        err.print(f"error: not accepted: {exc}", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    lost = max(done.lost.size - done.restored_size, 0)
    err.print(f"accepted: the checkpoint of size {done.lost.size} kept beside the key is "
              f"not extended by the restored ledger of {done.restored_size} entries "
              f"({lost} or more entries lost); recorded as ledger.restore_acknowledged; "
              f"that checkpoint is kept at {done.moved_to}", markup=False, soft_wrap=True)
    if done.witnessed_lost:
        err.print(f"the witness copies of sizes {', '.join(map(str, done.witnessed_lost))} "
                  f"belong to the lost history: move them out of the witness directory",
                  markup=False, soft_wrap=True)
    if done.checkpoint is not None:
        print(done.checkpoint.note, end="")


@audit_app.command("export")
def export(
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Bundle file to write.")],
    config: ConfigOpt = None,
) -> None:
    """Write the whole ledger (leaves, checkpoints, key) to a bundle, signing the tree first."""
    st = load_state(config, upgrade="never")
    _sign_now(st)
    tmp = out_path.with_name(out_path.name + ".partial")
    reader = readonly_sessions(st.sessions)
    with tmp.open("wb") as f, reader() as session, _progress("exporting") as progress:
        ring = st.ledger.ring()
        # Up to the checkpoint just signed, as the API's export: an event a running server
        # integrated in between would be a tail no checkpoint covers, and verify refuses it.
        signed = checkpoints.latest(session)
        n = bundle.write(session, f, origin=st.ledger.origin,
                         key=ring.signer.verifier.encode(), exported_at=st.now(),
                         keys=[v.encode() for v in ring.chain], progress=progress,
                         upto=signed.size if signed is not None else 0)
    tmp.replace(out_path)
    err.print(f"wrote {n} entries to {out_path}")


@audit_app.command("verify")
def verify_cmd(
    bundle_path: Annotated[
        Path | None, typer.Option("--bundle", help="A bundle from `accord audit export`.")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Fetch the bundle from this Accord (uses ACCORD_TOKEN)."),
    ] = None,
    key_text: Annotated[
        str | None,
        typer.Option("--key", help="The verifier key you pinned, or a file holding it "
                                   "(a path, or @PATH)."),
    ] = None,
    pin: Annotated[
        Path | None, typer.Option("--pin", help="A checkpoint you saved earlier (a file).")
    ] = None,
    witness: Annotated[
        Path | None, typer.Option("--witness", help="A witness directory of checkpoints.")
    ] = None,
    allow_unsigned_tail: Annotated[
        bool, typer.Option(help="Accept entries newer than the last signed checkpoint.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    check_recordings: Annotated[
        bool | None, typer.Option(
            "--recordings/--no-recordings",
            help="Also check the bytes of every SSH recording chunk against its "
                 "gateway.ssh_chunk event (fetched from --url, or from ACCORD_URL with "
                 "--bundle). Default: on with --url.")
    ] = None,
) -> None:
    """Recompute the ledger offline and check every signature; exit 1 on any damage."""
    if (bundle_path is None) == (url is None):
        err.print("error: give exactly one of --bundle FILE or --url URL")
        raise typer.Exit(2)
    try:
        pinned_key = _read_key(key_text) if key_text else None
    except (NoteError, OSError) as exc:
        err.print(f"error: --key: {exc}", markup=False)
        raise typer.Exit(2) from None
    pin_text = pin.read_text(encoding="utf-8") if pin else None
    with _source(bundle_path, url) as (opener, path), _progress("verifying") as progress:
        report = verify(opener, key=pinned_key, pin=pin_text, witness=witness,
                        allow_unsigned_tail=allow_unsigned_tail, progress=progress, path=path)
        if check_recordings if check_recordings is not None else url is not None:
            _verify_recordings(opener, url, report)
    _print_report(report, as_json)
    if not report.ok:
        raise typer.Exit(1)


def _verify_recordings(opener: Callable[[], IO[bytes]], url: str | None,
                       report: Report) -> None:
    """Each SSH recording chunk's stored bytes against the sha256 and size in its event."""
    from accord.gateway.ssh.recordings import CHUNK, check_chunk

    settings = Settings.from_env()
    if url is not None:
        settings = dataclasses.replace(settings, url=str(url).rstrip("/"))
    marker = f'"type":"{CHUNK}"'.encode()
    checked = 0
    with opener() as f, AccordClient(settings) as client:
        bundle.read_header(f)
        for index, leaf, _ in bundle.records(f):
            if marker not in leaf:
                continue
            data = json.loads(leaf)["data"]
            buf = io.BytesIO()
            try:
                client.download(f"/recordings/{data['sha256']}", buf)
                blob: bytes | None = buf.getvalue()
            except ClientError as exc:
                if exc.status != 404:
                    err.print(f"error: recordings: {exc.detail}", markup=False)
                    raise typer.Exit(1) from None
                blob = None
            problem = check_chunk(data, blob)
            if problem is not None:
                report.fail(f"index {index}: {problem}", index)
            checked += 1
    err.print(f"recordings: {checked} SSH recording chunks checked against the ledger",
              markup=False)


def _read_key(text: str) -> Verifier:
    """The key itself, or a file holding it (`@path`, or a path to a file that exists)."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    elif "+" not in text and Path(text).is_file():
        text = Path(text).read_text(encoding="utf-8")
    return Verifier.decode(text)


@contextmanager
def _source(path: Path | None, url: str | None
            ) -> Iterator[tuple[Callable[[], IO[bytes]], Path]]:
    if path is not None:
        if not path.exists():
            err.print(f"error: {path}: no such file")
            raise typer.Exit(2)
        yield (lambda: path.open("rb")), path
        return
    with tempfile.TemporaryDirectory(prefix="accord-verify-") as tmp:
        local = Path(tmp) / "ledger.bundle"
        settings = Settings.from_env()
        settings = dataclasses.replace(settings, url=str(url).rstrip("/"))
        try:
            with AccordClient(settings) as client, local.open("wb") as f:
                client.download("/audit/bundle", f)
        except ClientError as exc:
            err.print(f"error: {exc.detail}", markup=False)
            raise typer.Exit(1) from None
        yield (lambda: local.open("rb")), local


SHOWN = 5  # problems printed; the first names the first bad index


def _print_report(report: Report, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "ok": report.ok, "size": report.size, "origin": report.origin, "key": report.key,
            "root": report.root.hex(), "checkpoints": report.checkpoints,
            "witnessed": report.witnessed, "pinned": report.pinned,
            "first_bad_index": report.first_bad_index, "problems": report.ordered(),
            "warnings": report.warnings, "keys": report.keys, "rotations": report.rotations,
        }, indent=2))
        return
    for w in report.warnings:
        err.print(f"warning: {w}", markup=False)
    for r in report.rotations:
        err.print(f"key rotation {r}", markup=False)
    if report.ok:
        extra = f", pinned checkpoint of size {report.pinned}" if report.pinned is not None else ""
        wit = f", {report.witnessed} witness copies" if report.witnessed else ""
        out.print(f"OK: {report.size} entries of {report.origin} verified against "
                  f"{report.checkpoints} signed checkpoints{wit}{extra}", markup=False)
        return
    where = (f"first bad index: {report.first_bad_index}" if report.first_bad_index is not None
             else "first bad index: unknown (see below)")
    err.print(f"FAILED: {where}", markup=False)
    problems = report.ordered()
    for p in problems[:SHOWN]:
        err.print(f"  - {p}", markup=False)
    if len(problems) > SHOWN:
        err.print(f"  … and {len(problems) - SHOWN} more problems, which follow from those "
                  f"or lie later in the log (--json lists them all)", markup=False)


@audit_app.command("tail")
def tail(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep waiting for new events.")]
    = False,
    type_: Annotated[str | None, typer.Option("--type", help="Only this event type.")] = None,
    last: Annotated[int, typer.Option("--last", "-n", help="Start with the last N events.")] = 20,
) -> None:
    """Print ledger events as JSON lines (talks to ACCORD_URL with ACCORD_TOKEN)."""
    try:
        with AccordClient() as client:
            size = int(client.get("/audit/events", {"limit": 1})["size"])
            cursor = max(0, size - last)
            while True:
                page = client.get("/audit/events", {"cursor": str(cursor), "limit": 500,
                                                    "type": type_})
                for item in page["items"]:
                    print(json.dumps({"index": item["index"], **item["event"]}), flush=True)
                    cursor = int(item["index"]) + 1
                if page["next_cursor"]:
                    continue
                if not follow:
                    return
                time.sleep(1)  # polling an HTTP API: there is nothing to await here
    except ClientError as exc:
        err.print(f"error: {exc.detail}", markup=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        return
