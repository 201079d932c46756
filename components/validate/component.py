"""validate: the great-expectations suite over one family of the corpus (`musicvae validate`).

Emits the HTML report, the quarantine list and the corpus handed on to conversion: the input corpus without
its quarantined files. Corrupt files therefore never reach training, and the run goes on with the rest; a
corpus left with no file (empty, or all invalid), or with no training or no held-out file, stops the run here
with a message that says so.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def validate(
    data: Input[Dataset],
    family: str,
    corpus: Output[Dataset],
    report: Output[HTML],
    quarantine: Output[Dataset],
    summary: Output[Metrics],
) -> int:
    """Validate `<data>/<family>.tar` (a corpus directory from scripts/build_corpus.py); return the files kept."""
    import csv
    import json
    import shutil
    import tarfile
    import tempfile
    from pathlib import Path

    from musicvae.data.corpus import MANIFEST_COLUMNS, read_manifest
    from musicvae.validate import main as validate_main

    source = Path(data.path)
    archive = source / f"{family}.tar"
    if not archive.is_file() or not (source / "manifest.csv").is_file():
        raise FileNotFoundError(f"{source} is not a corpus directory: it needs manifest.csv and {family}.tar "
                                "(built by scripts/build_corpus.py, or `dvc pull`)")
    work = Path(tempfile.mkdtemp(prefix="musicvae-validate-"))
    if validate_main([str(archive), "--family", family, "--report-dir", str(work)]) != 0:
        raise RuntimeError(f"musicvae validate could not read {archive} (see the log above)")
    result = json.loads((work / "validation.json").read_text())["summary"]
    shutil.copyfile(work / "report.html", report.path)

    # The report names tar members "<archive>:<member>"; the manifest and the converters name them <member>.
    prefix = f"{archive}:"
    with open(work / "quarantine.csv", newline="") as f:
        rejected = {row["name"].removeprefix(prefix): row["reason"] for row in csv.DictReader(f)}
    Path(quarantine.path).parent.mkdir(parents=True, exist_ok=True)
    with open(quarantine.path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["member", "reason"])
        writer.writerows(sorted(rejected.items()))

    rows = [r for r in read_manifest(source) if r["family"] == family and r["member"] not in rejected]
    splits = {split: sum(r["split"] == split for r in rows) for split in ("train", "heldout")}
    counts = {"files": result["n_files"], "accepted": result["n_accepted"], "quarantined": result["n_quarantined"],
              "suite_success": float(result["success"]), "train_files": splits["train"],
              "heldout_files": splits["heldout"]}
    for name, value in counts.items():
        summary.log_metric(name, value)
    # The file too (the validation summary and the failed expectations): an artifact with no file is one
    # that kfp.local's cache cannot reuse.
    Path(summary.path).write_text(json.dumps({**result, **counts}, indent=1, sort_keys=True) + "\n")
    if not rows:
        raise ValueError(f"no valid {family} file in {source}: {result['n_files']} files, "
                         f"{result['n_quarantined']} quarantined; nothing to train on (see the validation report)")
    for split, count in splits.items():
        if count == 0:
            raise ValueError(f"no valid {family} file in the {split} split of {source} "
                             f"({result['n_quarantined']} quarantined); training needs both train and heldout files")

    out = Path(corpus.path)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if rejected:  # a new archive with the accepted members only
        with tarfile.open(archive) as src, tarfile.open(out / f"{family}.tar", "w") as dst:
            for row in rows:
                member = src.getmember(row["member"])
                dst.addfile(member, src.extractfile(member))
    else:
        shutil.copyfile(archive, out / f"{family}.tar")
    corpus.metadata.update(family=family, files=len(rows), quarantined=len(rejected), **splits,
                           data_version=data.metadata.get("data_version", ""))
    print(f"validation: {result['n_files']} {family} files, {len(rows)} kept, {len(rejected)} quarantined")
    return len(rows)
