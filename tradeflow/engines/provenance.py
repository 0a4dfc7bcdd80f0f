"""Which implementation trained a model: the verified upstream tree, a test double, or our own code.

A model must not claim upstream's repository and commit when something else produced it (the
FinAgent interface double in ``tests/support`` follows upstream's interface, not its results).
So the claim is measured, not declared: the upstream files actually imported are hashed and
compared with the digest manifest the install script verifies against
(``scripts/<upstream>-<commit7>.sha256``, generated from the pinned commit's git objects). Every
imported file must be in the manifest with its digest and the package dir must hold no other
file; files the manifest lists but an install left out (upstream's configs, notebooks) are allowed.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from tradeflow.names import PROJECT_ROOT

#: what the stand-ins under tests/support are (named so in a model's provenance)
TEST_DOUBLES = PROJECT_ROOT / "tests" / "support"


@dataclass(frozen=True)
class Provenance:
    """What produced a model. ``implementation``: ``upstream`` (tree verified against the
    manifest), ``test_double`` (a stand-in under tests/support), ``unverified`` (anything else
    that imported) or ``builtin`` (this project's code); ``label`` is the one line runs show."""

    implementation: str
    label: str
    repository: str | None = None
    commit: str | None = None
    origin: str | None = None
    files: int = 0
    #: sha256 over the sorted ``<sha256>  <path>`` lines of the files verified (or found)
    tree_sha256: str | None = None
    manifest: str | None = None
    problems: str | None = None

    @property
    def verified(self) -> bool:
        return self.implementation in ("upstream", "builtin")

    def as_dict(self) -> dict:
        return {**asdict(self), "verified": self.verified}


def read_manifest(path: Path) -> dict[str, str]:
    """``{relative path: sha256}`` from a ``sha256sum``-format manifest ('#' lines are comments)."""
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(None, 1)
            entries[name.strip().removeprefix("*")] = digest
    return entries


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_files(root: Path, package: str) -> dict[str, str]:
    """Every file under ``root/package`` (no bytecode, notebooks or egg-info), as ``{rel: sha256}``."""
    base = root / package
    out = {}
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".ipynb") \
                or ".egg-info" in rel:
            continue
        out[rel] = _sha256(path)
    return out


def tree_digest(files: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{files[k]}  {k}\n" for k in sorted(files)).encode()).hexdigest()


def verify_tree(root: Path, package: str, *, manifest: Path, repository: str, commit: str) -> Provenance:
    """The provenance of the files under ``root/package`` (see the module docstring)."""
    files = tree_files(root, package)
    digest = tree_digest(files)
    common = {"repository": repository, "commit": commit, "origin": str(root / package), "files": len(files),
              "tree_sha256": digest, "manifest": manifest.name}
    short = f"{repository}@{commit[:12]}"
    try:
        in_root = (root / package).resolve().is_relative_to(TEST_DOUBLES.resolve())
    except OSError:
        in_root = False
    if in_root:
        return Provenance("test_double", f"test double {(root / package).resolve().relative_to(PROJECT_ROOT)} "
                          f"(NOT upstream {short}; tree sha256 {digest[:12]})", **common)
    if not manifest.is_file():
        return Provenance("unverified", f"unverified {short} at {root / package} (manifest {manifest.name} not "
                          f"found; tree sha256 {digest[:12]})", problems="manifest not found", **common)
    expected = read_manifest(manifest)
    changed = [k for k, v in files.items() if k in expected and expected[k] != v]
    extra = [k for k in files if k not in expected]
    if not files or changed or extra:
        problems = "; ".join(p for p in (f"changed: {' '.join(changed[:5])}" if changed else "",
                                         f"not upstream: {' '.join(extra[:5])}" if extra else "",
                                         "no files" if not files else "") if p)
        return Provenance("unverified", f"unverified tree at {root / package}, does not match {manifest.name} "
                          f"({problems}; tree sha256 {digest[:12]})", problems=problems, **common)
    return Provenance("upstream", f"upstream {short}, {len(files)} files verified against {manifest.name} "
                      f"(tree sha256 {digest[:12]})", **common)


def builtin_provenance() -> Provenance:
    """This project's engine: its code is the training run's commit (``tradeflow.code_version``)."""
    from importlib.metadata import version

    return Provenance("builtin", f"builtin (tradeflow env + stable-baselines3 {version('stable-baselines3')})")
