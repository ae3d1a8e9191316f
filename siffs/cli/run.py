"""``siffs run|exec|shell|test|inspect|bundle``: use an image or a directory tree as Apptainer would.

A directory is handed to ``runtime`` as it is. A SIF file is verified and mounted by
``siffs.cli.mount.mounted_image`` for the duration of the command, so the container runs in a
child and this process stays to unmount. run/exec/shell/test follow Apptainer's exit codes
(runtime.md §12.3): the command's own status, 128+N for signal N, and 255 with one ``FATAL:``
line for anything that kept the command from starting.

The runtime's modules are imported where they are used, the container's (``runtime.launch``)
only once the image is mounted: the mount daemon forked by then imports its FUSE binding on the
other core while this process imports the runtime, instead of one after the other.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from runtime.errors import ContainerError, InvalidRequest, report, set_quiet, warn
from runtime.paths import real_path
from runtime.request import OverlayImage, Request
from siffs.cli import encrypted, output, runoptions, trust
from siffs.cli.common import CommandError, exit_code_for
from siffs.cli.exitcodes import ExitCode
from siffs.cli.progress import ProgressBar
from siffs.open.trust import keys_from
from siffs.sif.load import Image
from siffs.sif.types import FsType, PartType


def _quiet_runtime() -> None:
    set_quiet(output.verbosity() == output.Verbosity.QUIET)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for action, summary in (
        ("run", "run the image's runscript"),
        ("exec", "run a command in the container"),
        ("shell", "start an interactive shell in the container"),
        ("test", "run the image's test script"),
    ):
        usage = f"siffs {action} [options] IMAGE{' COMMAND' if action == 'exec' else ''} [ARGS...]"
        p = sub.add_parser(action, help=summary + " (as apptainer " + action + ")", usage=usage)
        p.add_argument("image", help="SIF file or directory tree")
        if action == "exec":
            p.add_argument("command", help="program to run (looked up on the container's PATH)")
        p.add_argument("args", nargs=argparse.REMAINDER, help="arguments")
        runoptions.container_options(p)
        trust.add_arguments(p)
        encrypted.add_arguments(p)
        p.set_defaults(func=cmd_action, action=action)

    p = sub.add_parser("inspect", help="show an image's labels, runscript, environment or definition file")
    p.add_argument("image", help="SIF file or directory tree")
    what = p.add_mutually_exclusive_group()
    for flag in ("labels", "runscript", "test", "startscript", "helpfile", "environment", "deffile"):
        what.add_argument(f"--{flag}", dest="what", action="store_const", const=flag, help=f"show the {flag}")
    what.add_argument(
        "--list-apps", dest="what", action="store_const", const="apps", help="list the SCIF apps"
    )
    p.add_argument("--app", default="", metavar="NAME", help="show a SCIF app's metadata instead")
    p.add_argument("--json", action="store_true", help="print as Apptainer's 'inspect --json'")
    trust.add_arguments(p)
    encrypted.add_arguments(p)
    p.set_defaults(func=cmd_inspect, what="labels")

    p = sub.add_parser("bundle", help="write an OCI runtime bundle that rootless runc runs")
    p.add_argument("image", help="SIF file (mounted at BUNDLE_DIR/rootfs, verified) or directory tree")
    p.add_argument("bundle_dir", help="bundle directory (config.json is written there)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the runscript")
    runoptions.environment_options(p)
    p.add_argument(
        "-B", "--bind", action="append", default=[], metavar="SRC[:DST[:ro|rw]]", help="bind mount"
    )
    p.add_argument("--init", action="store_true", help="start the image's tini/dumb-init as PID 1 (signals)")
    trust.add_arguments(p)
    encrypted.add_arguments(p)
    p.set_defaults(func=cmd_bundle)


def _mounted(image: str, args: argparse.Namespace) -> contextlib.AbstractContextManager[str]:
    # Imported here: a directory target never needs the FUSE daemon (pyfuse3, trio).
    from siffs.cli.mount import mounted_image  # noqa: PLC0415

    # --fakeroot: the image's files show as the caller's, that is as root inside, as in Apptainer.
    return mounted_image(image, args, as_caller=bool(getattr(args, "fakeroot", False)))


@contextlib.contextmanager
def _tree(args: argparse.Namespace) -> Iterator[str]:
    """The directory to run: the target itself, or the mount point of a SIF for the block's duration."""
    if not os.path.isfile(args.image):
        yield args.image
        return
    with _mounted(args.image, args) as mount_point:
        yield mount_point


def cmd_action(args: argparse.Namespace) -> NoReturn:
    if args.image.startswith("instance://"):
        from siffs.cli.instance import join  # noqa: PLC0415 - only instance:// needs it

        join(args, args.action)
    _quiet_runtime()
    encrypted.KeyChoice.from_args(args)  # takes the passphrase out of the container's environment
    try:
        _fetch_remote(args)
        refused = runoptions.refusal(args)
        if refused:
            raise InvalidRequest(refused)
        request = runoptions.request(args, args.action)
        if not needs_mounts(request, args.image):
            from runtime.launch import exec_container  # noqa: PLC0415 - see the module docstring

            exec_container(request)  # a directory, or a missing target the runtime reports
        with contextlib.ExitStack() as stack:
            request = with_images(stack, request, args)
            from runtime.launch import run_container  # noqa: PLC0415 - after the mount: see the module docstring

            status = run_container(request)
    except ContainerError as exc:
        report(exc)
        sys.exit(exc.exit_status)
    except CommandError:
        raise
    except Exception as exc:  # image, verification and mount errors: Apptainer's single FATAL line
        if exit_code_for(exc) is None:
            raise
        print(f"FATAL: {args.image}: {exc}", file=sys.stderr)
        sys.exit(ExitCode.CONTAINER_FAILED)
    sys.exit(status)


def needs_mounts(request: Request, image: str) -> bool:
    """Whether ``request`` uses images siffs mounts first (``with_images``): a SIF, data images,
    squashfs overlays. A directory alone goes to the runtime as it is."""
    _, data_images = _split_data_images(request.binds)
    _, mounted_images = _split_data_mounts(request.mounts)
    squashfs = any(_is_squashfs(spec) for spec in request.overlays)
    return bool(data_images or mounted_images or squashfs or os.path.isfile(image))


def with_images(stack: contextlib.ExitStack, request: Request, args: argparse.Namespace) -> Request:
    """``request`` with the images it names mounted for ``stack``'s duration: data images bound
    read-only, squashfs overlays as read-only layers, a SIF as the root with its overlay partitions."""
    binds, data_images = _split_data_images(request.binds)
    mounts, mounted_images = _split_data_mounts(request.mounts)
    for source, inside, dest in data_images + mounted_images:  # verified and mounted as any image
        if not os.path.isfile(source):
            raise InvalidRequest(f"bind {source}: image-src= needs a SIF file")
        mount = stack.enter_context(_mounted(source, args))
        binds.append(f"{mount}{inside.rstrip('/')}:{dest}:ro")
    overlays = [
        _squashfs_layer(stack, spec, args) if _is_squashfs(spec) else spec for spec in request.overlays
    ]
    request = request._replace(binds=binds, mounts=mounts, overlays=overlays)
    if os.path.isfile(args.image):
        partitions = _overlay_partitions(
            args.image, request.writable, bool(request.overlays or request.writable_tmpfs)
        )
        mount_point = stack.enter_context(_mounted(args.image, args))
        request = request._replace(root=mount_point, image_overlays=partitions, writable=False)
    return request


def _fetch_remote(args: argparse.Namespace) -> None:
    """``oras://``, ``docker://``, ``oci:`` and ``oci-archive:`` images: pulled into siffs' cache (or
    reused from it), as Apptainer does; ``args.image`` then names the cached SIF, which is verified
    and mounted like any other."""
    scheme, sep, rest = args.image.partition(":")
    if not sep or scheme not in ("oras", "docker", "oci", "oci-archive"):
        return
    if scheme in ("oras", "docker") and not rest.startswith("//"):
        return
    from siffs.registry.pull import RegistryPull, cached_image  # noqa: PLC0415 -- only for remote images

    keys = None if getattr(args, "allow_unsigned", False) else keys_from(args.key, required=False)
    with ProgressBar("pulling") as progress:
        args.image = str(cached_image(args.image, options=RegistryPull(), keys=keys, progress=progress))


_BIND_OPTIONS = ("ro", "rw")


def _split_data_images(specs: Sequence[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """``-B IMAGE:DST:image-src=PATH`` items taken out of ``specs``, as (IMAGE, PATH, DST).

    In a comma list, a word without ``:`` that is a bind option (``ro``, ``image-src=...``)
    belongs to the bind before it, as in Apptainer's syntax.
    """
    plain: list[str] = []
    images: list[tuple[str, str, str]] = []
    for spec in specs:
        items: list[str] = []
        for word in spec.split(","):
            if (
                items
                and ":" not in word
                and (word in _BIND_OPTIONS or word.startswith(("image-src=", "id=")))
            ):
                items[-1] += "," + word
            else:
                items.append(word)
        for item in items:
            parts = item.split(":", 2)
            options = dict(o.partition("=")[::2] for o in parts[2].split(",")) if len(parts) == 3 else {}
            if "id" in options:
                raise InvalidRequest(f"bind {item}: id= (a partition of a data image) is not supported yet")
            if "image-src" in options:
                images.append((os.path.abspath(parts[0]), options["image-src"] or "/", parts[1]))
            else:
                plain.append(item)
    return plain, images


def _split_data_mounts(specs: Sequence[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """``--mount type=bind,src=IMAGE,dst=DST,image-src=PATH`` lines taken out, as ``_split_data_images``."""
    plain: list[str] = []
    images: list[tuple[str, str, str]] = []
    for spec in specs:
        for record in csv.reader(spec.splitlines()):
            fields = dict(f.partition("=")[::2] for f in record)
            if "image-src" not in fields:
                plain.append(",".join(f'"{f}"' if "," in f else f for f in record))
                continue
            source = fields.get("source") or fields.get("src") or ""
            dest = fields.get("destination") or fields.get("dst") or fields.get("target") or ""
            if not source or not dest:
                raise InvalidRequest(f"--mount {spec!r}: mounts must specify a source and a destination")
            images.append((os.path.abspath(source), fields["image-src"] or "/", dest))
    return plain, images


def _squashfs_layer(stack: contextlib.ExitStack, spec: str, args: argparse.Namespace) -> str:
    """A squashfs overlay image, read-only whatever the spec says: its root is a layer, served by
    siffs' own reader and verified as any image. Refusals name the overlay, with exit status 255."""
    try:
        return f"{stack.enter_context(_mounted(_overlay_path(spec), args))}:ro"
    except Exception as exc:
        if exit_code_for(exc) is None:
            raise
        raise InvalidRequest(f"--overlay {spec}: {exc}") from None


def _overlay_path(spec: str) -> str:
    return spec.rpartition(":")[0] if spec.endswith((":ro", ":rw")) else spec


def _is_squashfs(spec: str) -> bool:
    from runtime.fuselayers import image_kind  # noqa: PLC0415 - only for --overlay

    path = _overlay_path(spec)
    return os.path.isfile(path) and image_kind(path) == "squashfs"


def _overlay_partitions(image: str, writable: bool, overlays: bool) -> list[OverlayImage]:
    """The image's embedded ext3 overlay partitions, read-only as Apptainer applies them by default.

    With ``--writable`` the first one takes the writes, as in Apptainer. A signed image is refused
    then: writing would break its signature (Apptainer will not add an overlay to a signed image).
    """
    with Image.open(image) as sif:
        found = [
            OverlayImage(real_path(image), d.offset, d.size)
            for d in sif.descriptors
            if (part := d.partition) is not None
            and (part.fs_type, part.part_type) == (FsType.EXT3, PartType.OVERLAY)
        ]
        signed = bool(sif.signatures())
    if writable:
        if overlays:
            raise InvalidRequest("--writable cannot be combined with --writable-tmpfs or --overlay")
        if not found:
            raise InvalidRequest(
                "--writable: the image has no overlay partition and a SIF's own filesystem is read-only; "
                "use --writable-tmpfs or --overlay, or add one with 'apptainer overlay create'"
            )
        if signed:
            raise InvalidRequest(
                f"--writable: {image} is signed: writing into its overlay partition would break the "
                "signature; use --overlay DIR or --writable-tmpfs instead"
            )
        found[0] = found[0]._replace(writable=True)
    return found


def cmd_inspect(args: argparse.Namespace) -> None:
    """Print as ``apptainer inspect`` does: sorted ``key: value`` labels, files without trailing newlines."""
    from runtime import metadata  # noqa: PLC0415 - see the module docstring

    _fetch_remote(args)
    with _tree(args) as root:
        if not os.path.isdir(root):
            raise CommandError(f"{args.image} does not exist", ExitCode.IO)
        if args.app and args.app not in metadata.apps(root):
            raise CommandError(f"the image has no app {args.app!r} (see --list-apps)", ExitCode.NOT_FOUND)
        value = _inspect(root, args.what, args.app)
    if args.json:
        attributes: dict[str, object] = {args.what: value}
        if args.app:
            attributes = {"apps": {args.app: attributes}}
        # Apptainer's layout (Go's MarshalIndent): tabs, keys sorted.
        document = {"data": {"attributes": attributes}, "type": "container"}
        print(json.dumps(document, indent="\t", sort_keys=True, ensure_ascii=False))
    elif isinstance(value, dict):
        sys.stdout.write("".join(f"{k}: {value[k]}\n" for k in sorted(value)))
    elif isinstance(value, list):
        sys.stdout.write("".join(f"{name}\n" for name in value))
    else:
        sys.stdout.write(value)


def _inspect(root: str, what: str, app: str) -> dict[str, str] | list[str] | str:
    from runtime import metadata  # noqa: PLC0415 - see the module docstring

    if what == "apps":
        return metadata.apps(root)
    if what == "labels":
        return metadata.labels(root, app)
    if what == "environment":
        return "".join(
            f"=== {path} ===\n{text.rstrip(chr(10))}\n\n" for path, text in metadata.environment(root, app)
        )
    files = {**metadata.FILES, "deffile": metadata.DEFFILE.rsplit("/", 1)[1]}
    path = f"{metadata.metadata_dir('' if what == 'deffile' else app)}/{files[what]}"
    text = metadata.read_text(root, path)
    if text is None:
        raise CommandError(f"the image has no {what} ({path})", ExitCode.NOT_FOUND)
    return text.rstrip("\n") + "\n"


def cmd_bundle(args: argparse.Namespace) -> None:
    from runtime import bundle, envfile  # noqa: PLC0415 - see the module docstring
    from runtime.environment import collect_overrides, forwarded_host  # noqa: PLC0415
    from runtime.launch import env_options  # noqa: PLC0415

    _quiet_runtime()
    encrypted.KeyChoice.from_args(args)  # takes the passphrase out of the environment in config.json
    tree = args.image
    if os.path.isfile(args.image):
        # A bundle outlives this command: the image stays mounted at BUNDLE_DIR/rootfs.
        from siffs.cli.mount import mount_image  # noqa: PLC0415 - see _mounted

        tree = os.path.join(args.bundle_dir, "rootfs")
        os.makedirs(tree, exist_ok=True)
        mount_image(args.image, tree, args)
        print(f"mounted {args.image} at {tree}; 'siffs umount {tree}' when the bundle is no longer needed")
    elif not os.path.isdir(args.image):
        raise CommandError(f"{args.image} does not exist", ExitCode.IO)
    environ = dict(os.environ)
    try:
        scope = {**environ, "APPTAINER_IMAGE": os.path.abspath(args.image)}
        files = [envfile.load(path, scope, runoptions.strip_separator(args.args)) for path in args.env_file]
        overrides = collect_overrides(environ, files, env_options(args.env))
        document = bundle.config(
            tree,
            runoptions.strip_separator(args.args),
            overrides,
            forwarded_host(environ, cleanenv=True),
            binds=args.bind,
            use_init=args.init,
            evaluate=not args.no_eval,
        )
    except ContainerError as exc:
        raise CommandError(str(exc), ExitCode.USAGE) from None
    for warning in overrides.warnings:
        warn(warning)
    path = bundle.write(args.bundle_dir, document)
    print(f'wrote {path}; run it with: runc --root "$XDG_RUNTIME_DIR/runc" run -b {args.bundle_dir} NAME')
