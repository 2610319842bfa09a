"""A contact sheet for a person to review: per identity, its most suspicious images by one noise
score, as one self-contained HTML file (thumbnails embedded as JPEG data URIs, no network)."""
from __future__ import annotations

import base64
import html
import io

import numpy as np
import pandas as pd

#: Identities on one sheet, most suspicious first, and images per identity.
IDENTITIES = 40
PER_IDENTITY = 8
#: Thumbnail side in pixels.
THUMB = 96


def _thumbnail(image) -> str:
    """A uint8 [3, H, W] tensor as a JPEG data URI."""
    from PIL import Image

    arr = image.permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    im = Image.fromarray(arr)
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def class_names(manifest: pd.DataFrame) -> pd.Series:
    """label -> the identity it names: the ``identity`` of the rows whose true label
    (``orig_label``) is that label. Never a sample's own folder, which for a mislabelled sample
    is another identity's."""
    orig = manifest["orig_label"] if "orig_label" in manifest.columns else manifest["label"]
    return manifest.assign(_class=orig)[orig >= 0].groupby("_class")["identity"].first()


def contact_sheet(run, table: pd.DataFrame, score: str, manifest: pd.DataFrame,
                  identities: int = IDENTITIES, per_identity: int = PER_IDENTITY) -> str:
    """The HTML sheet: the ``identities`` identities whose worst sample scores highest, each with
    its ``per_identity`` highest-scored images (score, file, removed / relabelled, and the noise
    type where the manifest records injected noise). ``table``: :func:`run_scores` rows with
    ``removed`` and ``relabelled``; ``manifest``: the run's manifest (paths, identities)."""
    from noisyfr.data import open_index
    from noisyfr.dotted import get_dotted
    from noisyfr.noise import NoisyDataset

    index = open_index(str(get_dotted(run.config, "data.train")))
    source = run.manifest_path if run.manifest_path is not None else None
    dataset = NoisyDataset(index, manifest=str(source)) if source is not None else NoisyDataset(index)
    names = manifest.set_index("index")
    classes = class_names(manifest)
    t = table.dropna(subset=[score]).sort_values(score, ascending=False, kind="stable")
    worst = t.groupby("label", sort=False)[score].max().sort_values(ascending=False, kind="stable")
    parts = ["<!doctype html><meta charset='utf-8'><title>noisyfr contact sheet</title>",
             "<style>body{font-family:sans-serif}figure{display:inline-block;margin:3px;width:",
             f"{THUMB + 6}px;font-size:10px;vertical-align:top}}.removed img{{outline:3px solid #c00}}"
             ".relabelled img{outline:3px solid #f90}h2{font-size:14px;margin:12px 0 2px}</style>",
             f"<h1>Most suspicious images by <code>{html.escape(score)}</code></h1>",
             f"<p>Run <code>{html.escape(str(run.path))}</code>. Red: removed; orange: relabelled. "
             "Per identity, its highest-scored images first.</p>"]
    for label in worst.index[:identities]:
        rows = t[t["label"] == label].head(per_identity)
        ident = classes.get(int(label), str(label))
        parts.append(f"<h2>{html.escape(str(ident))} (label {int(label)})</h2>")
        for _, r in rows.iterrows():
            i = int(r["sample_index"])
            klass = "removed" if r.get("removed") else ("relabelled" if r.get("relabelled") else "")
            path = str(names.loc[i, "path"]) if i in names.index else str(i)
            noise = f" · {r['noise']}" if run.manifest_path is not None else ""
            parts.append(f"<figure class='{klass}'><img src='{_thumbnail(dataset[i][0])}' "
                         f"alt='{html.escape(path)}'><figcaption>{html.escape(score)} {r[score]:.3g}"
                         f"{html.escape(noise)}<br>{html.escape(path.rsplit('/', 1)[-1])}</figcaption></figure>")
    return "\n".join(parts) + "\n"
