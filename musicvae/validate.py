"""MIDI corpus validation: per-file features, a great-expectations suite over them, and a quarantine list.

Files are parsed with `musicvae.data.midi_io.read_midi`, the same reader the converters use, so a
file accepted here is one the converters can read. Every rule lives once, in `build_suite()`: the
quarantine list is read back from GX's own per-row failures (`unexpected_index_list`), never
recomputed from a second copy of the thresholds.

Two kinds of expectation, marked in each expectation's `meta["scope"]`:
- "file": a row that fails it is quarantined (its reasons are listed, it is never silently dropped).
- "corpus": a property of the whole set (e.g. "at least 90 % of files in a 16-step meter"); a
  failure makes the run unsuccessful but quarantines no file, because the converters skip such
  files' bars themselves and the files are otherwise sound.

great_expectations takes seconds to import (pandas about one), so both are imported inside the
functions that need them: `import musicvae.validate` for `midi_features` alone stays fast.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import sys
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musicvae.data.midi_io import MAX_MIDI_BYTES, read_midi

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core import ExpectationSuite

# The thresholds: defined here once, read by the suite, echoed in the descriptions.
MIN_QPM, MAX_QPM = 20.0, 400.0
MIN_DURATION_S, MAX_DURATION_S = 1.0, 2 * 3600.0
PIANO_MIN_PITCH, PIANO_MAX_PITCH = 21, 108  # MusicVAE's melody/trio configs keep this range
STEPS_PER_QUARTER, STEPS_PER_BAR = 4, 16  # every MusicVAE config works on 16-step bars
METER_MOSTLY = 0.9
PIANO_RANGE_MOSTLY = 0.95

FAMILIES = ("melody", "drums", "trio", "groove")
MIDI_SUFFIXES = (".mid", ".midi")

# Column -> pandas nullable dtype, so unparsable rows hold <NA> (which GX counts as missing, not as
# unexpected: a file that does not parse fails only "parses", with the parser's reason).
FEATURE_DTYPES: dict[str, str] = {
    "name": "str",
    "parses": "boolean",
    "error": "str",
    "size_bytes": "Int64",
    "n_instruments": "Int64",
    "n_notes": "Int64",
    "n_drum_notes": "Int64",
    "n_melodic_notes": "Int64",
    "min_pitch": "Int64",
    "max_pitch": "Int64",
    "n_pitches_out_of_piano_range": "Int64",
    "first_qpm": "Float64",
    "n_tempo_changes": "Int64",
    "time_signatures": "str",
    "all_meters_16_steps": "boolean",
    "n_time_signature_changes": "Int64",
    "duration_s": "Float64",
    "has_drums": "boolean",
    "has_melodic": "boolean",
    "programs": "str",
}


def _collapse(values: Iterable[Any]) -> list[Any]:
    """Drop consecutive repeats: a re-stated tempo or meter is not a change."""
    out: list[Any] = []
    for v in values:
        if not out or out[-1] != v:
            out.append(v)
    return out


def midi_features(name: str, data: bytes) -> dict[str, Any]:
    """Features of one MIDI file; never raises. Unparsable files get `parses=False` and `error`.

    Work is O(bytes + notes): the reader caps the byte size and pretty_midi's tick count, and
    nothing here walks time (no piano rolls), so a file claiming hours of duration costs no more.
    """
    row: dict[str, Any] = dict.fromkeys(FEATURE_DTYPES)
    row.update(name=name, size_bytes=len(data), error="", time_signatures="", programs="")
    try:
        ns = read_midi(data)
    except Exception as e:  # MidiReadError is the expected case; anything else is still a bad file
        # read_midi names raw bytes "<bytes>"; the row already carries the file's name.
        reason = str(e).removeprefix("<bytes>: ")
        row.update(parses=False, error=reason if reason else type(e).__name__)
        return row

    melodic = [n.pitch for n in ns.notes if not n.is_drum]
    pitches = [n.pitch for n in ns.notes]
    tempos = _collapse(t.qpm for t in sorted(ns.tempos, key=lambda t: t.time))
    meters = _collapse((t.numerator, t.denominator) for t in sorted(ns.time_signatures, key=lambda t: t.time))
    # No time signature means 4/4, as in Magenta's quantisation.
    bar_steps = [STEPS_PER_QUARTER * 4 * num / den for num, den in meters or [(4, 4)]]
    row.update(
        parses=True,
        n_instruments=len({n.instrument for n in ns.notes}),  # instruments that play notes
        n_notes=len(ns.notes),
        n_drum_notes=len(pitches) - len(melodic),
        n_melodic_notes=len(melodic),
        min_pitch=min(pitches) if pitches else None,
        max_pitch=max(pitches) if pitches else None,
        n_pitches_out_of_piano_range=sum(not PIANO_MIN_PITCH <= p <= PIANO_MAX_PITCH for p in melodic),
        first_qpm=float(tempos[0]) if tempos else None,
        n_tempo_changes=max(len(tempos) - 1, 0),
        time_signatures=";".join(f"{num}/{den}" for num, den in meters),
        all_meters_16_steps=all(steps == STEPS_PER_BAR for steps in bar_steps),
        n_time_signature_changes=max(len(meters) - 1, 0),
        duration_s=float(ns.total_time),
        has_drums=len(pitches) > len(melodic),
        has_melodic=bool(melodic),
        # Melodic programs only: a drum track's program number does not select its sound.
        programs=";".join(str(p) for p in sorted({n.program for n in ns.notes if not n.is_drum})),
    )
    return row


def features_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(list(rows), columns=list(FEATURE_DTYPES)).astype(FEATURE_DTYPES)


def build_suite(family: str | None = None) -> ExpectationSuite:
    """The expectations for a per-file features DataFrame (see module docstring for the scopes)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")

    def per_file(expectation_cls: Any, description: str, **kwargs: Any) -> Any:
        return expectation_cls(description=description, meta={"scope": "file"}, **kwargs)

    def corpus(expectation_cls: Any, description: str, **kwargs: Any) -> Any:
        return expectation_cls(description=description, meta={"scope": "corpus"}, **kwargs)

    expectations = [
        corpus(gxe.ExpectTableRowCountToBeBetween, "the corpus has at least one file", min_value=1),
        per_file(gxe.ExpectColumnValuesToBeInSet, "parses as a Standard MIDI File",
                 column="parses", value_set=[True]),
        per_file(gxe.ExpectColumnValuesToBeBetween, f"at most {MAX_MIDI_BYTES} bytes",
                 column="size_bytes", max_value=MAX_MIDI_BYTES),
        per_file(gxe.ExpectColumnValuesToBeBetween, "has at least one note", column="n_notes", min_value=1),
        per_file(gxe.ExpectColumnValuesToBeBetween, "pitches are MIDI pitches (0-127)",
                 column="min_pitch", min_value=0, max_value=127),
        per_file(gxe.ExpectColumnValuesToBeBetween, "pitches are MIDI pitches (0-127)",
                 column="max_pitch", min_value=0, max_value=127),
        per_file(gxe.ExpectColumnValuesToBeBetween, f"first tempo within {MIN_QPM:g}-{MAX_QPM:g} qpm",
                 column="first_qpm", min_value=MIN_QPM, max_value=MAX_QPM),
        per_file(gxe.ExpectColumnValuesToBeBetween,
                 f"lasts {MIN_DURATION_S:g} s to {MAX_DURATION_S / 3600:g} h",
                 column="duration_s", min_value=MIN_DURATION_S, max_value=MAX_DURATION_S),
        corpus(gxe.ExpectColumnValuesToBeInSet,
               f"at least {METER_MOSTLY:.0%} of files only use meters of {STEPS_PER_BAR} steps per bar",
               column="all_meters_16_steps", value_set=[True], mostly=METER_MOSTLY),
        corpus(gxe.ExpectColumnValuesToBeBetween,
               f"at least {PIANO_RANGE_MOSTLY:.0%} of files keep melodic pitches within "
               f"{PIANO_MIN_PITCH}-{PIANO_MAX_PITCH}",
               column="n_pitches_out_of_piano_range", min_value=0, max_value=0, mostly=PIANO_RANGE_MOSTLY),
    ]
    # What each family's converter needs to find in a file at all.
    if family in ("drums", "groove", "trio"):
        expectations.append(per_file(gxe.ExpectColumnValuesToBeInSet, f"has drum notes ({family})",
                                     column="has_drums", value_set=[True]))
    if family in ("melody", "trio"):
        expectations.append(per_file(gxe.ExpectColumnValuesToBeInSet, f"has melodic notes ({family})",
                                     column="has_melodic", value_set=[True]))
    return gx.ExpectationSuite(name=f"midi_{family or 'any'}", expectations=expectations)


@dataclass
class ValidationReport:
    success: bool
    family: str | None
    features: pd.DataFrame
    gx_result: dict[str, Any]
    quarantine: list[tuple[str, str]]
    accepted: list[str]

    def expectation_rows(self) -> list[dict[str, Any]]:
        """One summary row per expectation, in suite order (for the CLI table and the HTML report)."""
        rows = []
        for r in self.gx_result["results"]:
            cfg = r["expectation_config"]
            rows.append({
                "expectation": cfg["type"],
                "column": cfg["kwargs"].get("column", ""),
                "scope": cfg["meta"]["scope"],
                "description": cfg["description"],
                "success": bool(r["success"]),
                "unexpected": r["result"].get("unexpected_count", 0),
            })
        return rows

    def summary(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "family": self.family,
            "n_files": len(self.features),
            "n_accepted": len(self.accepted),
            "n_quarantined": len(self.quarantine),
            "failed_expectations": [
                f"{r['expectation']}({r['column']})" for r in self.expectation_rows() if not r["success"]
            ],
        }


def _run_suite(df: pd.DataFrame, family: str | None) -> dict[str, Any]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")  # nothing written to disk, no project folder
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # tqdm bars on stderr otherwise
    batch = (context.data_sources.add_pandas(name="midi")
             .add_dataframe_asset(name="files")
             .add_batch_definition_whole_dataframe("all")
             .get_batch(batch_parameters={"dataframe": df}))
    suite = context.suites.add(build_suite(family))
    # COMPLETE lists every failing row index, which is how quarantine maps back to files.
    result = batch.validate(suite, result_format="COMPLETE").to_json_dict()
    # Drop the fields that change from run to run, so reports of the same files are identical.
    result["meta"].get("batch_markers", {}).pop("ge_load_time", None)
    for r in result["results"]:
        r["expectation_config"].pop("id", None)
    return result


def _quarantine_reasons(df: pd.DataFrame, gx_result: dict[str, Any]) -> dict[int, str]:
    """Row index -> reasons, read from the per-file expectations' failing rows (suite order)."""
    reasons: dict[int, list[str]] = {}
    for r in gx_result["results"]:
        cfg = r["expectation_config"]
        if cfg["meta"]["scope"] != "file":
            continue
        if r["exception_info"]["raised_exception"]:
            # A rule that could not be evaluated would silently accept every file: that is a bug.
            message = r["exception_info"]["exception_message"]
            raise RuntimeError(f"expectation {cfg['type']} failed to run: {message}")
        column = cfg["kwargs"]["column"]
        for index in r["result"].get("unexpected_index_list", []):
            row = df.loc[index]
            # A parse failure's reason is the reader's own; other rules show the offending value.
            detail = row["error"] if column == "parses" else f"{cfg['description']} ({column}={row[column]})"
            reasons.setdefault(int(index), []).append(detail)
    return {i: "; ".join(reasons[i]) for i in sorted(reasons)}


def validate_midi_files(items: Iterable[tuple[str, bytes]], family: str | None = None) -> ValidationReport:
    """Validate (name, bytes) pairs: features per file, the GX suite over them, and the quarantine list."""
    df = features_frame(midi_features(name, data) for name, data in items)
    gx_result = _run_suite(df, family)
    reasons = _quarantine_reasons(df, gx_result)
    names = list(df["name"])
    return ValidationReport(
        success=bool(gx_result["success"]),
        family=family,
        features=df,
        gx_result=gx_result,
        quarantine=[(names[i], reason) for i, reason in reasons.items()],
        accepted=[name for i, name in enumerate(names) if i not in reasons],
    )


def _html_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html_report(report: ValidationReport) -> str:
    s = report.summary()
    totals = _html_table(
        ["files", "accepted", "quarantined", "success", "family"],
        [[s["n_files"], s["n_accepted"], s["n_quarantined"], s["success"], s["family"] or "any"]],
    )
    expectations = _html_table(
        ["expectation", "column", "scope", "description", "success", "unexpected"],
        [[r["expectation"], r["column"], r["scope"], r["description"], r["success"], r["unexpected"]]
         for r in report.expectation_rows()],
    )
    quarantined = _html_table(["file", "reason"], report.quarantine)
    style = "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px;text-align:left}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>MIDI validation</title>"
            f"<style>{style}</style></head><body><h1>MIDI validation</h1><h2>Totals</h2>{totals}"
            f"<h2>Expectations</h2>{expectations}<h2>Quarantined files</h2>{quarantined}</body></html>\n")


def write_report(report: ValidationReport, out_dir: str | Path) -> Path:
    """Write validation.json, quarantine.csv, features.csv and report.html into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"summary": report.summary(), "gx_result": report.gx_result}
    (out / "validation.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    with open(out / "quarantine.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "reason"])
        writer.writerows(report.quarantine)
    report.features.to_csv(out / "features.csv", index=False)
    (out / "report.html").write_text(_html_report(report))
    return out


# ---- command line ----------------------------------------------------------------------------------

def _is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith((".tar", ".tar.gz", ".tgz"))


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, directories and tar archives named by INPUT arguments (globs expanded), in a stable order.

    Raises FileNotFoundError for an input that names nothing (a usage error).
    """
    def midi_under(directory: Path) -> list[Path]:
        return sorted(p for p in directory.rglob("*") if p.is_file() and _is_midi_name(p.name))

    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            paths.extend(midi_under(path))
        elif path.exists():
            paths.append(path)  # named explicitly: validated whatever its suffix
        else:
            matches = [Path(m) for m in sorted(glob(text, recursive=True))]
            if not matches:
                raise FileNotFoundError(f"no such file, directory or glob match: {text}")
            for match in matches:
                if match.is_dir():
                    paths.extend(midi_under(match))
                elif _is_midi_name(match.name) or _is_tar(match):
                    paths.append(match)
    unique: dict[Path, Path] = {}
    for p in paths:  # overlapping inputs (a dir and a glob inside it) list a file once
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def iter_midi_items(paths: Iterable[Path]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) for every MIDI file in `paths`; tar members are named `archive.tar:member`.

    Reads stop one byte past MAX_MIDI_BYTES: enough for the reader to reject the file, without
    loading an arbitrarily large file into memory.
    """
    for path in paths:
        if _is_tar(path):
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    if member.isfile() and _is_midi_name(member.name):
                        handle = tar.extractfile(member)
                        assert handle is not None  # regular members always have a file object
                        yield f"{path}:{member.name}", handle.read(MAX_MIDI_BYTES + 1)
        else:
            with open(path, "rb") as f:
                yield str(path), f.read(MAX_MIDI_BYTES + 1)


def _print_summary(report: ValidationReport, max_listed: int = 20) -> None:
    rows = report.expectation_rows()
    width = max(len(f"{r['expectation']}({r['column']})") for r in rows)
    print(f"{'expectation'.ljust(width)}  scope   ok     unexpected")
    for r in rows:
        label = f"{r['expectation']}({r['column']})".ljust(width)
        print(f"{label}  {r['scope']:<6}  {str(r['success']):<5}  {r['unexpected']}")
    s = report.summary()
    print(f"\nfiles {s['n_files']}  accepted {s['n_accepted']}  quarantined {s['n_quarantined']}  "
          f"suite {'passed' if s['success'] else 'FAILED'}")
    for name, reason in report.quarantine[:max_listed]:
        print(f"  quarantined {name}: {reason}")
    if len(report.quarantine) > max_listed:
        print(f"  ... and {len(report.quarantine) - max_listed} more (see the report directory)")


def run_validate(args: argparse.Namespace) -> int:
    """`musicvae validate`: 0 when the run completed (quarantined files included), 2 on usage errors."""
    try:
        paths = expand_inputs(args.inputs)
        if not paths:
            raise FileNotFoundError(f"no MIDI files found in: {' '.join(args.inputs)}")
        report = validate_midi_files(iter_midi_items(paths), family=args.family)
    except (OSError, tarfile.TarError) as e:  # missing inputs, unreadable archives
        print(f"musicvae validate: error: {e}", file=sys.stderr)
        return 2
    _print_summary(report)
    if args.report_dir:
        print(f"report written to {write_report(report, args.report_dir)}")
    return 0


def add_validate_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "validate",
        help="check MIDI files with a great-expectations suite and list the files to quarantine",
        description="Validate MIDI files (files, directories, globs or .tar archives). Exit code 0 when the "
                    "run completed, even with quarantined files; 2 on usage errors.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="a MIDI file, a directory (searched recursively), a glob, or a .tar archive")
    parser.add_argument("--family", choices=FAMILIES,
                        help="add the family's expectations (e.g. drums need drum notes)")
    parser.add_argument("--report-dir",
                        help="write validation.json, quarantine.csv, features.csv and report.html here")
    parser.set_defaults(func=run_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="musicvae")
    add_validate_parser(parser.add_subparsers(required=True))
    args = parser.parse_args(["validate", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
