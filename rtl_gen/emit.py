"""Generate the output directory of one core: Verilog, memory images, manifest and report.

Everything is produced in memory first, then written as one set (``write_output``): the manifest
names every other file of the set with its sha256 and is moved into place last, so a reader
(``rtl_gen.report.verify_output``) can tell a complete set from anything else.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading

from amaranth.back import verilog
from amaranth.hdl import Shape
from amaranth.lib import wiring

import hwrnn
from hwrnn import formats as fm
from hwrnn import saturation
from hwrnn.checkpoint import QuantLayer
from hwrnn.config import ConfigError, Folding
from hwrnn.datapath import Geometry, weight_image
from hwrnn.devices import DEVICES

from .core import LstmCore
from .dedupe import share_modules
from .memory import WMEM_VERILOG, hex_image
from .report import (MANIFEST_FILE, REPORT_FILE, WEIGHTS_FILE, add_analytic, check_module_name, config_sections,
                     file_digest, manifest_files, resources_text)

MANIFEST_VERSION = 2  # 2: "files" names every file of the set with its sha256
#: temporary folders of write_output, inside the output directory: <prefix><pid>
TEMP_PREFIX = ".rtl_gen-tmp-"
#: bits of all top-level inputs together that amaranth.back.verilog can number (its nets: 16 bits)
MAX_INPUT_BITS = (1 << 16) - 1


def port_list(core: LstmCore) -> list[dict]:
    """Flattened Verilog ports (name, direction, width) from the component signature."""
    ports = [{"name": "clk", "dir": "in", "width": 1}, {"name": "rst", "dir": "in", "width": 1}]
    for path, member, _value in core.signature.flatten(core):
        name = "__".join(str(p) for p in path)
        width = Shape.cast(member.shape).width
        ports.append({"name": name, "dir": "in" if member.flow == wiring.In else "out", "width": width})
    return ports


def build_manifest(core: LstmCore, name: str, source: str, steps: int) -> dict:
    cfg, fold, layer = core.cfg, core.fold, core.layer
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "weights_source": source,
        "config": cfg.to_dict(),
        "folding": fold.to_dict(),
        "weights": core.weights,
        **config_sections(cfg, fold, core.weights, steps, core.bias_w),  # geometry, latency, memory, devices
        "ports": port_list(core),
        "payload_fields": {
            "x": {"element_bits": cfg.abits, "elements": cfg.input},
            "out": {"h": {"offset": 0, "element_bits": cfg.abits, "elements": cfg.hidden},
                    **({"c": {"offset": cfg.hidden * cfg.abits, "element_bits": core.cell_width,
                              "elements": cfg.hidden, "signed": cfg.cell_format.signed_word}}
                       if cfg.gate_set.has_cell_state else {})},
            "load": {"data": {"offset": 0, "bits": core.load_data_w},
                     "addr": {"offset": core.load_data_w, "bits": core.load_addr_w},
                     "sel": {"offset": core.load_data_w + core.load_addr_w, "bits": 2,
                             "values": {"weight_word": 0, "bias_word": 1, "multiplier": 2}}},
        },
        "formats": fm.tap_formats(cfg, layer.mult, layer.shift, layer.bias_int),
        "scale": {"s": layer.scale, "multiplier": layer.mult, "shift": layer.shift,
                  "bias_bits": core.bias_w, "multiplier_bits": core.mult_w},
        "hwrnn_version": hwrnn.__version__,
    }
    add_analytic(manifest)  # "resources" (analytic estimate per FPGA family) and "derived" figures
    return manifest


def report_text(manifest: dict) -> str:
    c, f, lat, mem = manifest["config"], manifest["folding"], manifest["latency"], manifest["memory"]
    order = {n: k for k, n in enumerate(DEVICES)}  # the device table's order, also after a JSON round trip
    devices = sorted(manifest["devices"].items(), key=lambda nd: (order.get(nd[0], len(order)), nd[0]))
    fits = [n for n, d in devices if d["fits_block_ram"]]
    nofit = [n for n, d in devices if not d["fits_block_ram"]]
    lines = [
        f"hwrnn core '{manifest['name']}': W{c['wbits']}A{c['abits']} {c.get('cell_type', 'lstm').upper()}"
        + (f" ({c['weight_code']} weights)" if c.get("weight_code", "balanced") != "balanced" else "") + ", hidden "
        f"{c['hidden']}, input {c['input']}, " + (f"cell {c['cell']}, " if "c" in manifest["payload_fields"]["out"] else "")
        + f"candidate {c['candidate']}",
        f"weights: {manifest['weights_source']}",
        *([f"cell state: {manifest['cell_saturation']['note']}"] if "cell_saturation" in manifest else []),
        f"folding: PE {f['pe']} rows x SIMD {f['simd']} columns per cycle, bit planes {f['planes']}",
        f"weights: {'on-chip memory initialised from ' + mem['weights_file'] if manifest['weights'] == 'memory' else 'streamed through port w, ' + str(manifest['geometry']['weight_word_bits']) + ' bits per cycle (' + mem['weights_file'] + ' holds one step of words)'}",
        f"latency: {lat['cycles_per_step']} cycles per time step (MAC {lat['mac_cycles']} + pipeline "
        f"{lat['pipeline_depth']}; MAC bound {lat['mac_bound']}), {lat['cycles_per_sequence']} cycles for "
        f"{lat['steps']} steps",
        f"weight memory: {mem['weight_bits']} bits ({mem['weight_bits'] / 8 / 1024:.1f} KiB; padded "
        f"{mem['weight_bits_padded']}), {mem['weight_bits'] / mem['fp32_weight_bits'] * 100:.1f} % of FP32",
        f"weights fit in block RAM of: {', '.join(fits) if fits else 'none of the known devices'}",
    ]
    if nofit:
        lines.append(f"weights do not fit in block RAM of: {', '.join(nofit)}")
    if not fits and manifest["weights"] == "memory":
        lines.append("for devices whose block RAM is too small, generate with --weights stream")
    return "\n".join(lines) + "\n" + resources_text(manifest)


#: time steps of the saturation calibration run (batch of hwrnn.saturation.CALIBRATION_BATCH)
CALIBRATION_STEPS = 35


def generate(layer: QuantLayer, fold: Folding, name: str, source: str, steps: int = 35,
             weights: str = "memory") -> dict[str, str]:
    """All output files as {file name: text}; the manifest names every other file with its sha256.
    With weights="stream" the core has no weight memory and weights.hex is the word sequence a host
    streams into port w once per time step. ConfigError for a name the Verilog cannot have."""
    check_module_name(name)
    fold.check_against(layer.cfg)
    core = LstmCore(layer, fold, image_file=WEIGHTS_FILE, weights=weights)
    in_bits = sum(p["width"] for p in port_list(core) if p["dir"] == "in")
    if in_bits > MAX_INPUT_BITS:
        raise ConfigError(f"the core's input ports would have {in_bits} bits, Amaranth's Verilog back end takes at "
                          f"most {MAX_INPUT_BITS}: use a smaller --pe or --simd")
    g = Geometry(layer.cfg, fold)
    # one module per distinct lane type (rtl_gen.dedupe): simulators compile each once
    text = share_modules(verilog.convert(core, name=name, emit_src=False))
    if weights == "memory":
        text = text + "\n" + WMEM_VERILOG
    manifest = build_manifest(core, name, source, steps)
    # cell-state saturation over a seeded calibration input (hwrnn.saturation): a format note, and a
    # warning on stderr (rtl_gen's CLI) when a trained layer saturates its cell on many values
    if layer.cfg.gate_set.has_cell_state:
        sat = saturation.measure(layer, saturation.calibration_codes(layer.cfg, steps=CALIBRATION_STEPS))
        manifest["cell_saturation"] = {**sat.to_dict(), "note": saturation.note(sat),
                                       "warning": saturation.warning(sat)}
    files = {
        f"{name}.v": text,
        WEIGHTS_FILE: hex_image(weight_image(layer, fold), g.word_bits),
        REPORT_FILE: report_text(manifest),
    }
    manifest["files"] = {f: file_digest(t.encode()) for f, t in files.items()}
    return {**files, MANIFEST_FILE: json.dumps(manifest, indent=2, sort_keys=True) + "\n"}


# ---- writing a set of files: interrupts, temp folders, the swap --------------------------------------

class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while ``signals_raise`` was in force; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_deferral = {"depth": 0, "pending": None}


def _on_signal(signum, _frame):
    if _deferral["depth"]:
        _deferral["pending"] = signum  # acted on when the swap is done
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise():
    """Inside: SIGINT and SIGTERM raise Interrupted (so ``finally`` blocks clean up), except while a
    swap of files is under way, which completes first. Only in the main thread (signal handlers
    cannot be set elsewhere); the previous handlers are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_deferred():
    _deferral["depth"] += 1
    try:
        yield
    finally:
        _deferral["depth"] -= 1
        pending = _deferral["pending"]
        if not _deferral["depth"] and pending is not None:
            _deferral["pending"] = None
            raise Interrupted(pending)


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(out_dir: str) -> None:
    """Remove temp folders of write_output in out_dir whose process is gone (a SIGKILL, a crash)."""
    try:
        entries = os.listdir(out_dir)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(TEMP_PREFIX):
            pid = entry[len(TEMP_PREFIX):]
            if not pid.isdigit() or int(pid) == os.getpid() or not _pid_alive(int(pid)):
                shutil.rmtree(os.path.join(out_dir, entry), ignore_errors=True)


def _previous_set(out_dir: str) -> set[str]:
    """The files the manifest now in out_dir names (with the manifest), or nothing without one."""
    try:
        with open(os.path.join(out_dir, MANIFEST_FILE)) as fh:
            man = json.load(fh)
        return set(manifest_files(man)) | {MANIFEST_FILE}
    except (OSError, ValueError, AttributeError):
        return set()


def _keep(src: str, dst: str) -> None:
    """A copy of src at dst (a hard link where the file system has them)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _swap(files, out: str, new: str, old: str) -> None:
    """Move the files of folder new into out, the manifest last; on any error put the earlier files
    back (kept in folder old) and remove the new ones, so out holds the complete earlier set."""
    placed = []
    try:
        for fname in [f for f in files if f != MANIFEST_FILE] + [MANIFEST_FILE]:
            dst = os.path.join(out, fname)
            had = os.path.lexists(dst)
            if had:
                _keep(dst, os.path.join(old, fname))
            os.replace(os.path.join(new, fname), dst)
            placed.append((fname, had))
        _fsync_dir(out)
    except BaseException:
        for fname, had in reversed(placed):
            dst = os.path.join(out, fname)
            with contextlib.suppress(OSError):
                if had:
                    os.replace(os.path.join(old, fname), dst)
                else:
                    os.unlink(dst)
        raise


def write_output(files: dict[str, str], out_dir: str) -> None:
    """Write a set of files into out_dir so that, after any error or SIGINT/SIGTERM, out_dir holds
    either the complete earlier set or the complete new one.

    ``files`` holds manifest.json, whose "files" entry names every file of the new set with its hash,
    and the files that changed (all of them, or a subset such as report.txt when a report is
    rewritten). They are written and synced in a temp folder inside out_dir (never its parent: -o
    may be a mount point or sit under a read-only folder), then moved into place with the manifest
    last; files the previous manifest named that the new one does not (an earlier --name's .v) are
    removed, nothing else is. Temp folders are removed on the way out and, if a process was
    killed, by the next run."""
    if MANIFEST_FILE not in files:
        raise ValueError("write_output needs the set's manifest.json")
    named = set(manifest_files(json.loads(files[MANIFEST_FILE]))) | {MANIFEST_FILE}
    if not set(files) <= named:
        raise ValueError(f"files {sorted(set(files) - named)} are not named by the manifest")
    out = os.path.abspath(out_dir)
    os.makedirs(out, exist_ok=True)
    remove_stale_temps(out)
    with signals_raise():
        tmp = os.path.join(out, f"{TEMP_PREFIX}{os.getpid()}")
        try:
            os.mkdir(tmp)
            new, old = os.path.join(tmp, "new"), os.path.join(tmp, "old")
            os.mkdir(new)
            os.mkdir(old)
            for fname, text in files.items():
                _write_synced(os.path.join(new, fname), text.encode())
            _fsync_dir(new)
            with _signals_deferred():
                previous = _previous_set(out)
                _swap(files, out, new, old)
                for fname in sorted(previous - named):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(out, fname))
        finally:
            with _signals_deferred():
                shutil.rmtree(tmp, ignore_errors=True)
