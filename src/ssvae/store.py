"""Finished results, kept by what they compute, and the retrains a user asked for.

A training job puts every run file it completes into the result store, under a key of what the
run computed: its settings (seed included), the training code, and the digests of the prepared
data and of its labeled split. A later job asked for the same computation (its run file
deleted, an input rebuilt with the same content, a setting changed and changed back, snakemake
interrupted as the job finished) takes the stored file back in seconds instead of training,
unless a retrain was asked for. The store keeps a copy of the run file: a damaged run file
leaves the stored one sound. Each entry is the run file and a record beside it with the digest
of its whole content; an entry that no longer matches it is named, removed and never delivered.

A retrain is asked for per run file (`request_retrain`, which the workflow calls for every
training job that snakemake runs because the user forced it): a request file beside the run
file that the job honours (the store stands in for nothing, checkpoints from before it are not
resumed) and removes once the retrained run file (or its diverged record) is written. No torch
here: the workflow imports it when it plans.
"""

import json
import uuid
from pathlib import Path

from ssvae.errors import InputError
from ssvae.io import DamagedFile, sha256, write_atomic


def result_key(settings_json: str, code_digest: str, data_digest: str, split_digest: str) -> str:
    """What a run computes, as one digest: equal keys, equal run files up to provenance."""
    what = {
        "settings": json.loads(settings_json),
        "code": code_digest,
        "data": data_digest,
        "split": split_digest,
    }
    return sha256(json.dumps(what, sort_keys=True).encode())


class ResultStore:
    """Run files by (run, seed, key) under `root`: <root>/<run>/seed<seed>/<key>.h5, with the
    record <key>.json (the key's parts and the file's sha256), written after the file."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, run: str, seed: int, key: str) -> Path:
        return self.root / run / f"seed{seed}" / f"{key}.h5"

    def put(self, entry: Path, content: bytes, what: dict) -> None:
        write_atomic(entry, content)
        record = what | {"sha256": sha256(content), "bytes": len(content)}
        write_atomic(entry.with_suffix(".json"), json.dumps(record, sort_keys=True).encode())

    def take(self, entry: Path) -> bytes | None:
        """The stored run file's content, checked against its record; None when there is no
        complete entry. A damaged entry is removed and raised as DamagedFile naming it."""
        record_path = entry.with_suffix(".json")
        if not record_path.exists():
            return None
        try:
            record_text, content = record_path.read_text(), entry.read_bytes()
        except FileNotFoundError:
            content = None  # a record without its file: damaged
        except OSError as err:
            raise InputError(f"{entry}: cannot be read ({err.strerror or err})") from None
        try:
            sound = content is not None and sha256(content) == json.loads(record_text)["sha256"]
        except (ValueError, KeyError, TypeError):
            sound = False
        if not sound:
            record_path.unlink(missing_ok=True)
            entry.unlink(missing_ok=True)
            raise DamagedFile(entry, "it does not match the digest recorded with it; removed")
        return content


def retrain_request_path(run_file: Path) -> Path:
    """run.h5 -> run.retrain: present while a retrain of that run file is pending."""
    return run_file.with_name(f"{run_file.stem}.retrain")


def request_retrain(run_file: Path) -> None:
    """Ask that the next training of `run_file` trains anew: a new request, so that not even a
    checkpoint of an earlier request's interrupted retrain is resumed."""
    write_atomic(retrain_request_path(Path(run_file)), uuid.uuid4().hex.encode())


def pending_retrain(run_file: Path) -> str | None:
    """The pending request's id, or None."""
    try:
        return retrain_request_path(run_file).read_text().strip() or None
    except FileNotFoundError:
        return None


def fulfil_retrain(run_file: Path, request: str | None) -> None:
    """The retrained run file is written: remove the request it answered (not a newer one)."""
    if request is not None and pending_retrain(run_file) == request:
        retrain_request_path(run_file).unlink(missing_ok=True)
