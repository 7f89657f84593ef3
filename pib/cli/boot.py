"""`pib boot`: start the built platform in QEMU and wait for its marker line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pib.config.types import Config
    from pib.image.boot import BootResult


def register(sub: Any) -> None:
    from pib.cli.common import common_options

    b = sub.add_parser("boot", help="boot the built platform in QEMU and check that it comes up",
                       parents=[common_options()])
    b.add_argument("--stamp", help="boot output/platform-STAMP (default: platform-latest)")
    b.add_argument("--kernel", type=Path, help="boot this kernel instead of the built one's")
    b.add_argument("--boot-archive", type=Path, help="boot this boot archive instead of the built one's")
    b.add_argument("--timeout", type=float, help="seconds to wait for the marker (default: [boot] timeout)")
    b.add_argument("--memory", type=int, help="MiB of memory (default: [boot] memory)")
    b.add_argument("--media", choices=("iso", "usb"),
                   help="boot the platform's medium (made by pib media) instead of its kernel directly")
    b.add_argument("--firmware", choices=("bios", "uefi"), help="with --media: SeaBIOS or OVMF (default: bios)")
    b.add_argument("--drive", choices=("cdrom", "usb"),
                   help="with --media: attach it as a CD-ROM or a USB stick (default: iso as CD-ROM, usb as USB)")
    b.set_defaults(func=_cmd_boot)


def _cmd_boot(args: argparse.Namespace) -> int:
    from pib.cli.common import emit_json, load_config, want_json
    from pib.errors import PibError, Reason
    from pib.image.boot import Platform, boot_configured, locate

    cfg = load_config(args)
    if args.media is not None:
        return _boot_media(args, cfg)
    if args.firmware is not None or args.drive is not None:
        raise PibError("--firmware and --drive go with --media", reason=Reason.USAGE,
                       hint="pib boot --media iso --firmware uefi")
    if (args.kernel is None) != (args.boot_archive is None):
        raise PibError("--kernel and --boot-archive go together", reason=Reason.USAGE,
                       hint="give both, or neither to boot the built platform")
    if args.kernel is not None:
        platform = Platform(args.stamp or "custom", args.kernel.resolve(), args.boot_archive.resolve())
    else:
        platform = locate(cfg.workspace.output_dir, args.stamp)
    result = boot_configured(cfg, platform, memory=args.memory, timeout=args.timeout)
    if want_json(args):
        emit_json({"stamp": platform.stamp, **result.to_json()})
        return 0 if result.passed else result_exit_code()
    return report(result)


def _boot_media(args: argparse.Namespace, cfg: Config) -> int:
    from pib.cli.common import emit_json, want_json
    from pib.errors import PibError, Reason
    from pib.image.boot import boot_medium_configured, locate
    from pib.image.media import recorded

    if args.kernel is not None or args.boot_archive is not None:
        raise PibError("--media boots the medium's own kernel", reason=Reason.USAGE,
                       hint="leave out --kernel and --boot-archive")
    platform = locate(cfg.workspace.output_dir, args.stamp)
    medium = recorded(platform.kernel.parent, args.media)
    if medium is None:
        raise PibError(f"platform {platform.stamp} has no {args.media} medium", reason=Reason.BOOT,
                       hint=f"make it first: pib media {args.media}"
                            + (f" --stamp {args.stamp}" if args.stamp else ""))
    firmware = args.firmware or "bios"
    result = boot_medium_configured(cfg, medium, stamp=platform.stamp, kind=args.media, firmware=firmware,
                                    drive=args.drive, memory=args.memory, timeout=args.timeout)
    if want_json(args):
        emit_json({"stamp": platform.stamp, "media": args.media, "firmware": firmware, "medium": str(medium),
                   **result.to_json()})
        return 0 if result.passed else result_exit_code()
    return report(result)


def report(result: BootResult) -> int:
    if result.passed:
        print(f"boot: PASS in {result.seconds:.1f}s: {result.marker_line}")
        print(f"console log: {result.log_path}")
        return 0
    result.check()  # raises the BOOT error with the console's tail
    return result_exit_code()


def result_exit_code() -> int:
    from pib.errors import EXIT_CODES, Reason

    return EXIT_CODES[Reason.BOOT]
