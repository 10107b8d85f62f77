"""A study folder you can trust: each step's record, the files it wrote, their schemas, and
the lock that keeps two studies out of one folder.

Every step of a study goes through this module:

* **The record** ``steps/NAME.json``: the step's key (everything that made its result, see
  :mod:`neuronlens.study.steps`), the size and SHA-256 of every file the step wrote, and how
  long it took. It is removed *before* the step starts writing and written only after its
  last file, so a step killed at any moment has no record and is never "unchanged".
* **Checked on the way back**: a record is reused only when its own schema holds, its key
  equals the key of the run now, and every file it lists is there with the same size and
  hash. A damaged, truncated or swapped file is named in the log, and the step is computed
  again. Every JSON file a study reads back is checked against its schema
  (:func:`read_json`).
* **The lock** (:class:`StudyLock`): one study at a time per folder. A second one is refused
  with the process that holds it; a lock left by a killed process is taken over (the kernel
  releases a dead process's ``flock``), and the log says so.
* **Temporary files** (:func:`remove_stale`): those a killed run left are removed, never
  those of a process still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

from neuronlens.errors import NeuronLensError
from neuronlens.io import file_sha256, json_text, write_text_atomic

try:  # POSIX; elsewhere a study folder is not locked (the README says so)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

RECORD_FORMAT = "neuronlens-step"
RECORD_VERSION = 2
LOCK_FILE = ".neuronlens.lock"


class StudyLockedError(NeuronLensError, RuntimeError):
    """Another study is running in the same output folder."""


class DamagedResultError(NeuronLensError, ValueError):
    """A saved file of a study that does not hold what its step wrote."""


# ---------------------------------------------------------------------------- schemas


class Opt:
    """A schema that also admits ``None`` (JSON ``null``: a non-finite number, or nothing)."""

    def __init__(self, inner) -> None:
        self.inner = inner


class MapOf:
    """A schema: an object with any string keys, every value of schema ``inner``."""

    def __init__(self, inner) -> None:
        self.inner = inner


class Extra:
    """A schema: an object with these keys (more are allowed: later versions may add some)."""

    def __init__(self, fields: dict) -> None:
        self.fields = fields


#: a number: int or float, not a bool
NUMBER = "number"


def check_schema(value, schema, where: str = "$") -> None:
    """Raise :class:`DamagedResultError` naming the first part of ``value`` that does not
    fit ``schema``: a type (``str``, ``int``, ``bool``, ``dict``, ``list``), :data:`NUMBER`,
    ``[inner]`` (a list), a dict of required keys (no others), :class:`Extra`,
    :class:`MapOf` or :class:`Opt`."""
    if isinstance(schema, Opt):
        if value is not None:
            check_schema(value, schema.inner, where)
        return
    if schema == NUMBER:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return _require(ok, where, "a number", value)
    if isinstance(schema, type):
        ok = isinstance(value, schema) and not (schema is int and isinstance(value, bool))
        return _require(ok, where, schema.__name__, value)
    if isinstance(schema, list):
        _require(isinstance(value, list), where, "a list", value)
        for i, v in enumerate(value):
            check_schema(v, schema[0], f"{where}[{i}]")
        return
    if isinstance(schema, MapOf):
        _require(isinstance(value, dict), where, "an object", value)
        for k, v in value.items():
            check_schema(v, schema.inner, f"{where}.{k}")
        return
    fields = schema.fields if isinstance(schema, Extra) else schema
    _require(isinstance(value, dict), where, "an object", value)
    missing = sorted(set(fields) - set(value))
    unknown = [] if isinstance(schema, Extra) else sorted(set(value) - set(fields))
    if missing or unknown:
        raise DamagedResultError(
            f"{where}: " + "; ".join(
                ([f"lacks {missing}"] if missing else []) + ([f"has unknown {unknown}"] if unknown else [])
            )
        )  # fmt: skip
    for k, sub in fields.items():
        check_schema(value[k], sub, f"{where}.{k}")


def _require(ok: bool, where: str, what: str, value) -> None:
    if not ok:
        raise DamagedResultError(f"{where}: expected {what}, got {str(value)[:60]!r}")


def read_json(path: Path, schema):
    """The JSON in ``path``, checked against ``schema``; a :class:`DamagedResultError`
    naming the file when it is not JSON or does not fit."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedResultError(f"{path} cannot be read as JSON: {err}") from err
    try:
        check_schema(value, schema)
    except DamagedResultError as err:
        raise DamagedResultError(f"{path} does not hold what neuronlens wrote: {err}") from None
    return value


# ---------------------------------------------------------------------------- file hashes


def file_digest(path: Path) -> dict:
    """``{"size": bytes, "sha256": hex}`` of one file."""
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def _expand(out: Path, rels) -> list[str]:
    """The files under ``out`` that ``rels`` name (a directory: every file in it)."""
    files = []
    for rel in rels:
        p = out / rel
        if p.is_dir():
            files += sorted(str(f.relative_to(out)) for f in p.rglob("*") if f.is_file())
        else:
            files.append(str(rel))
    return files


def hash_files(out: Path, rels) -> dict[str, dict]:
    """Size and SHA-256 of every file ``rels`` name (relative to ``out``); each must exist."""
    digests = {}
    for rel in _expand(out, rels):
        if not (out / rel).is_file():
            raise NeuronLensError(f"the step should have written {out / rel}, which is missing")
        digests[rel] = file_digest(out / rel)
    return digests


def changed_files(out: Path, files: dict[str, dict], rels=()) -> str | None:
    """``None`` when every file recorded is there, unchanged, and the directories among
    ``rels`` hold no other file; else which file is missing or changed, and how."""
    for rel, want in files.items():
        p = out / rel
        if not p.is_file():
            return f"{rel} is missing"
        size = p.stat().st_size
        if size != want["size"]:
            return f"{rel} changed ({size} bytes, {want['size']} when written)"
        if file_digest(p)["sha256"] != want["sha256"]:
            return f"{rel} changed (same size, another SHA-256)"
    extra = sorted(set(_expand(out, [r for r in rels if (out / r).is_dir()])) - set(files))
    return f"{extra[0]} was not written by the step" if extra else None


# ---------------------------------------------------------------------------- step records

RECORD_SCHEMA = {
    "format": str,
    "version": int,
    "key": Extra({"config": dict, "model": dict, "data": str, "neuronlens": str, "uses": dict}),
    "files": MapOf({"size": int, "sha256": str}),
    "seconds": NUMBER,
}


def record_path(out: Path, name: str) -> Path:
    return out / "steps" / f"{name.replace('/', '--')}.json"


def read_record(out: Path, name: str) -> tuple[dict | None, str]:
    """``(record, "")`` for a whole record of a finished step, else ``(None, why not)``."""
    path = record_path(out, name)
    if not path.is_file():
        return None, "no finished result"
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, f"its record {path.name} is damaged"
    if isinstance(raw, dict) and raw.get("format") != RECORD_FORMAT and "config" in raw:
        return None, "saved by an older neuronlens, before files were hashed"
    try:
        check_schema(raw, RECORD_SCHEMA)
    except DamagedResultError as err:
        return None, f"its record {path.name} is damaged ({err})"
    if raw["format"] != RECORD_FORMAT or raw["version"] != RECORD_VERSION:
        return None, f"its record {path.name} is of another format"
    return raw, ""


def start_record(out: Path, name: str) -> None:
    """Before a step writes anything: its old record goes, so a kill leaves it unfinished."""
    path = record_path(out, name)
    if path.exists():
        path.unlink()


def finish_record(out: Path, name: str, key: dict, rels, seconds: float) -> dict:
    """After a step's last file: its record, with the hash of every file it wrote."""
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "key": key,
        "files": hash_files(out, rels),
        "seconds": round(seconds, 1),
    }
    text = json_text(record, indent=2, sort_keys=True)
    write_text_atomic(record_path(out, name), text)
    return json.loads(text)  # as a later run reads it back (what later steps' keys digest)


# ---------------------------------------------------------------------------- parts of a step

PART_SCHEMA = {"key": str, "files": MapOf({"size": int, "sha256": str})}


def part_done(out: Path, marker: Path, key_digest: str) -> bool:
    """Whether a finished part of a step (a prompt seed of an interrupted run) was made with
    ``key_digest`` and its files are unchanged."""
    if not marker.is_file():
        return False
    try:
        raw = read_json(marker, PART_SCHEMA)
    except DamagedResultError:
        return False
    return raw["key"] == key_digest and changed_files(out, raw["files"]) is None


def finish_part(out: Path, marker: Path, key_digest: str, rels) -> None:
    """Mark a part of a step finished, after its files (see :func:`part_done`)."""
    raw = {"key": key_digest, "files": hash_files(out, rels)}
    write_text_atomic(marker, json_text(raw, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------- the lock


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class StudyLock(contextlib.AbstractContextManager):
    """Hold ``out/.neuronlens.lock`` while a study runs (an exclusive ``flock``; the file
    names the holder). A second study on the folder gets a :class:`StudyLockedError` that
    names the process; a lock whose holder was killed is taken over, with a log line."""

    def __init__(self, out: Path, log=print) -> None:
        self.path = Path(out) / LOCK_FILE
        self.log = log
        self.fd: int | None = None

    def __enter__(self) -> StudyLock:
        if fcntl is None:  # pragma: no cover - no flock on this platform
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StudyLockedError(
                f"{self.path.parent} is in use by another study ({holder}): wait until it "
                "has finished, stop it, or give this study another --out"
            ) from None
        old = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if old:
            self.log(f"took over the lock of {self.path.parent} left by a stopped study ({old})")
        me = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a lock file with no holder: released cleanly
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


_TEMP = re.compile(r"^\..+\.(tmp|old)-(\d+)$")


def remove_stale(out: Path, log=print) -> None:
    """Remove the temporary files (``.NAME.tmp-PID`` / ``.NAME.old-PID``) that a killed run
    left; those of a process still running (another writer) are left alone."""
    for stale in sorted(Path(out).rglob(".*")):
        m = _TEMP.match(stale.name)
        if m is None or (_alive(int(m.group(2))) and int(m.group(2)) != os.getpid()):
            continue
        log(f"removing {stale.relative_to(out)}, left by a stopped run")
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the folder


def check_out(out) -> Path:
    """The output folder as a path; refused when it names a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NeuronLensError(
            f"--out {out} is a file, not a folder: give a folder for the study's results "
            "(a new one, or one a study wrote)"
        )
    return out


@contextlib.contextmanager
def study_folder(out: Path, log=print):
    """Create (or reuse) ``out``, hold its lock, and remove what a killed run left. A run
    that fails before it has written anything but its config removes a folder it created,
    so a config that cannot run leaves nothing behind."""
    out = check_out(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with StudyLock(out, log):
            remove_stale(out, log)
            yield out
    except BaseException:
        kept = [
            f for f in out.rglob("*") if f.is_file() and f.name not in (LOCK_FILE, "config.json")
        ]
        if created and not kept:  # nothing computed: the folder held only the config
            shutil.rmtree(out, ignore_errors=True)
        raise
