"""Container images as docker-archive tars (what `docker save` writes; `docker load`,
`ctr images import` and `kind load image-archive` read it), with no registry and no daemon.

    layer_archive(out, ref, [base.tar, files.tar], {"Entrypoint": [...]})
    files_layer(out, files=[(src, "/usr/local/bin/x", 0o755)], symlinks=[...], dirs=[...])

Layers are plain tars, in order. Entries of a generated layer are owned by root with mtime 0,
so the same inputs give the same digest and a rebuilt archive is recognised as unchanged.
`python -m devcluster.archive` is the same for scripts (scripts/build-kind.sh).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

_CHUNK_BYTES = 1 << 20
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def layer_archive(archive: Path, ref: str | Sequence[str], layers: Path | Sequence[Path],
                  image_config: dict) -> None:
    """Write a docker-archive of `layers` (bottom first) tagged `ref`, with `image_config`
    (Entrypoint, Cmd, Env, User, Labels, StopSignal...; PATH is added when Env lacks it)."""
    refs = [ref] if isinstance(ref, str) else list(ref)
    layer_paths = [layers] if isinstance(layers, Path) else [Path(p) for p in layers]
    archive = Path(archive)
    tmp = archive.with_name(archive.name + ".tmp")
    env = list(image_config.get("Env") or [])
    if not any(entry.startswith("PATH=") for entry in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    digests = [_sha256(path) for path in layer_paths]
    config = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {**image_config, "Env": env},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in digests]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "devcluster.archive"}
                    for _ in digests],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    names = [f"{digest}/layer.tar" for digest in digests]
    manifest = [{"Config": config_name, "RepoTags": refs, "Layers": names}]
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as out:
        _add_bytes(out, "manifest.json", json.dumps(manifest).encode())
        _add_bytes(out, config_name, config_bytes)
        for name, path in dict(zip(names, layer_paths, strict=True)).items():
            out.add(path, arcname=name, recursive=False)
    os.replace(tmp, archive)


def _add_bytes(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    out.addfile(info, io.BytesIO(data))


def files_layer(layer: Path, *, files: Iterable[tuple[Path, str, int]] = (),
                symlinks: Iterable[tuple[str, str]] = (),
                dirs: Iterable[tuple[str, int]] = ()) -> Path:
    """A layer tar holding `files` (source, destination, mode), `symlinks` (destination,
    target) and `dirs` (destination, mode), with their parent directories."""
    seen: set[str] = set()
    layer.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(layer, "w", format=tarfile.GNU_FORMAT) as out:

        def directory(name: str, mode: int = 0o755) -> None:
            if name and name not in seen:
                seen.add(name)
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, mode
                out.addfile(info)

        def parents(dest: str) -> None:
            parts = dest.strip("/").split("/")[:-1]
            for index in range(len(parts)):
                directory("/".join(parts[: index + 1]))

        for dest, mode in dirs:
            parents(dest)
            directory(dest.strip("/"), mode)
        for source, dest, mode in files:
            parents(dest)
            info = tarfile.TarInfo(dest.strip("/"))
            info.size, info.mode = os.path.getsize(source), mode
            with open(source, "rb") as handle:
                out.addfile(info, handle)
        for dest, target in symlinks:
            parents(dest)
            info = tarfile.TarInfo(dest.strip("/"))
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            out.addfile(info)
    return layer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devcluster.archive",
        description="Write a docker-archive from layer tars and files. Layers in order: each "
                    "--layer, then one holding every --file, --symlink and --dir.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--tag", action="append", required=True)
    parser.add_argument("--layer", action="append", type=Path, default=[])
    parser.add_argument("--file", action="append", default=[], metavar="SRC:DEST[:MODE]")
    parser.add_argument("--symlink", action="append", default=[], metavar="DEST:TARGET")
    parser.add_argument("--dir", action="append", default=[], metavar="DEST[:MODE]")
    parser.add_argument("--entrypoint", type=json.loads)
    parser.add_argument("--cmd", type=json.loads)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--user")
    parser.add_argument("--stop-signal")
    parser.add_argument("--extract-last-layer", type=Path, metavar="TAR",
                        help="also copy the generated files layer to TAR (a reusable layer)")
    args = parser.parse_args(argv)

    files = []
    for spec in args.file:
        source, dest, *mode = spec.split(":")
        files.append((Path(source), dest, int(mode[0], 8) if mode else 0o755))
    symlinks = [tuple(spec.split(":", 1)) for spec in args.symlink]
    dirs = [(d, int(m, 8) if m else 0o755) for d, _, m in (s.partition(":") for s in args.dir)]
    layers = list(args.layer)
    generated = args.out.with_name(args.out.name + ".files-layer.tar")
    if files or symlinks or dirs:
        layers.append(files_layer(generated, files=files, symlinks=symlinks, dirs=dirs))
    config: dict = {"WorkingDir": "/"}
    for key, value in (("Entrypoint", args.entrypoint), ("Cmd", args.cmd),
                       ("User", args.user), ("StopSignal", args.stop_signal)):
        if value:
            config[key] = value
    if args.env:
        config["Env"] = args.env
    if args.label:
        config["Labels"] = dict(label.split("=", 1) for label in args.label)
    try:
        layer_archive(args.out, args.tag, layers, config)
        if args.extract_last_layer and generated.exists():
            shutil.copyfile(generated, args.extract_last_layer)
    finally:
        generated.unlink(missing_ok=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
