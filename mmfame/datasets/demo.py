"""A tiny, deterministic synthetic dataset of coloured shapes for demos and end-to-end tests.

Images show rectangles, ellipses and triangles (3 classes) in random colours on textured, noisy
backgrounds. The same kind of images is written in two real on-disk layouts, so that the upstream
dataset classes read them unchanged:

* COCO (mmdet ``CocoDataset`` + ``CocoMetric``, bbox and segm)::

    <root>/coco/train2017/000000000001.jpg ...
    <root>/coco/val2017/000000000001.jpg ...
    <root>/coco/annotations/instances_train2017.json
    <root>/coco/annotations/instances_val2017.json

  categories 1..3 = ``DEMO_CLASSES``; every annotation has ``bbox`` [x, y, w, h] (the extent of
  its polygon), ``area`` (mask pixels), ``iscrowd`` 0 and a float polygon ``segmentation`` whose
  pixels (those at least half covered) are the ones painted in the image. Use
  ``metainfo=dict(classes=DEMO_CLASSES)`` with ``CocoDataset``.

* ADE20K (mmseg ``ADE20KDataset`` + ``IoUMetric``)::

    <root>/ade/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_00000001.jpg
    <root>/ade/ADEChallengeData2016/annotations/{training,validation}/ADE_..._00000001.png

  uint8 label PNGs in ADE's convention: 0 is background/unlabelled (ignored by
  ``reduce_zero_label=True``), the shapes carry ADE class ids ``ADE_LABEL_IDS`` (1, 2, 3), which
  ``ADE20KDataset`` trains as labels 0, 1, 2 of its 150 classes (mmseg's tables print them with
  ADE's names 'wall', 'building', 'sky').

Each image is drawn from its own random stream ``(seed, layout, split, index)``, so the files are
identical for the same seed on every run. Generation takes seconds and a few MB; a directory
already complete for the same parameters is left as it is (a ``.mmfame_demo.json`` stamp records
them).

Command line: ``python -m mmfame.datasets.demo --out data/demo``.
"""
import argparse
import json
import os
import os.path as osp
import shutil
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['DEMO_CLASSES', 'DEMO_PALETTE', 'ADE_LABEL_IDS', 'make_coco_demo',
           'make_ade20k_demo', 'make_demo', 'render_sample']

DEMO_CLASSES = ('rectangle', 'ellipse', 'triangle')
DEMO_PALETTE = [(220, 20, 60), (0, 160, 80), (30, 60, 230)]
# ADE20K label ids (1..150, 0 = background) the shape classes are written with.
ADE_LABEL_IDS = {name: i + 1 for i, name in enumerate(DEMO_CLASSES)}
# Hue centre (OpenCV hue units, 0..180) of each class. The jitter is wide enough that colours of
# neighbouring classes overlap: colour is a hint, the shape decides.
_HUE_CENTRES = (0, 60, 120)
_HUE_JITTER = 40

_VERSION = 2  # bump when the rendering changes, so stale directories are regenerated
_STAMP = '.mmfame_demo.json'
_LAYOUT_IDS = {'coco': 0, 'ade': 1}
_SPLIT_IDS = {'train': 0, 'val': 1}


def _cv2():
    import cv2  # opencv comes with mmcv; imported lazily so that `import mmfame` stays light
    return cv2


# --------------------------------------------------------------------------------- rendering
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Float32 HxWx3 in [0, 255]: smooth colour field + gradient + faint stripes or checks."""
    cv2 = _cv2()
    base = rng.uniform(40, 215, size=(4, 4, 3)).astype(np.float32)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    gx, gy = np.cos(theta), np.sin(theta)
    ramp = (xx * gx + yy * gy) / max(h, w)
    img += (ramp[..., None] * rng.uniform(-40, 40, size=3)).astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        period = rng.uniform(6, 20)
        phi = rng.uniform(0, np.pi)
        pattern = np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period)
    elif kind == 1:  # checks
        cell = int(rng.integers(6, 17))
        pattern = (((xx // cell) + (yy // cell)) % 2) * 2.0 - 1.0
    else:  # blotches
        pattern = cv2.resize(rng.standard_normal((h // 8, w // 8)).astype(np.float32), (w, h),
                             interpolation=cv2.INTER_LINEAR)
    img += pattern[..., None].astype(np.float32) * rng.uniform(5, 18)
    return img


def _shape_polygon(rng: np.random.Generator, cls: int, cx: float, cy: float,
                   size: float) -> np.ndarray:
    """(N, 2) float polygon (x, y) of one shape of class ``cls`` around (cx, cy).

    Continuous image coordinates as in COCO (pixel (i, j) covers [j, j+1) x [i, i+1)), rounded to
    1/100 pixel so that the JSON holds exactly the polygon that was drawn.
    """
    if cls == 0:  # rectangle, rotated by at most 30 degrees
        w = size * rng.uniform(0.6, 1.0)
        h = size * rng.uniform(0.45, 1.0)
        a = np.deg2rad(rng.uniform(-30, 30))
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        pts = corners @ rot.T + [cx, cy]
    elif cls == 1:  # ellipse, as a 32-gon
        ax = size * rng.uniform(0.35, 0.5)
        ay = size * rng.uniform(0.25, 0.5)
        a = rng.uniform(0, np.pi)
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        ex, ey = ax * np.cos(t), ay * np.sin(t)
        pts = np.stack([cx + ex * np.cos(a) - ey * np.sin(a),
                        cy + ex * np.sin(a) + ey * np.cos(a)], axis=1)
    else:  # triangle: vertices near 0/120/240 degrees on a circle
        start = rng.uniform(0, 2 * np.pi)
        angles = start + np.deg2rad([0, 120, 240] + rng.uniform(-20, 20, size=3))
        radius = size / 2 * rng.uniform(0.85, 1.05, size=3)
        pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    return np.round(np.asarray(pts, dtype=np.float64), 2)


_SUPERSAMPLE = 8


def _rasterize(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """HxW bool mask of the pixels at least half covered by ``poly`` (continuous coordinates).

    Drawn on an 8x finer grid (sub-pixel vertices, cv2 ``shift``) and averaged down, so the mask
    follows the polygon's area like pycocotools' rasterisation of the same polygon does.
    """
    cv2 = _cv2()
    s = _SUPERSAMPLE
    fine = np.zeros((h * s, w * s), np.uint8)
    pts = np.round((poly * s - 0.5) * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(fine, [pts], 1, lineType=cv2.LINE_8, shift=4)
    cover = fine.reshape(h, s, w, s).mean(axis=(1, 3))
    return cover >= 0.5


def render_sample(rng: np.random.Generator, img_size: Tuple[int, int],
                  max_objects: int = 4, size_range: Tuple[float, float] = (0.22, 0.5)):
    """Draw one image.

    Returns ``(image, instances)``: ``image`` is an HxWx3 uint8 BGR array; ``instances`` is a list
    of dicts with ``cls`` (0-based index into ``DEMO_CLASSES``), ``polygon`` ((N, 2) float x, y in
    COCO's continuous coordinates) and ``mask`` (HxW bool, the pixels painted for this shape: those
    the polygon covers at least half). Shapes never overlap, so every mask is the visible object;
    every image holds 1..``max_objects`` shapes.
    """
    cv2 = _cv2()
    h, w = img_size
    img = _background(rng, h, w)
    side = min(h, w)
    num = int(rng.integers(1, max_objects + 1))
    occupied: List[Tuple[float, float, float, float]] = []
    instances = []
    for _ in range(num):
        # the first shape gets many tries: every image must hold at least one object
        for _attempt in range(30 if instances else 300):
            cls = int(rng.integers(len(DEMO_CLASSES)))
            size = side * rng.uniform(*size_range)
            margin = size / 2 + 1
            cx = rng.uniform(margin, w - 1 - margin)
            cy = rng.uniform(margin, h - 1 - margin)
            poly = _shape_polygon(rng, cls, cx, cy, size)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            if x0 < 0.5 or y0 < 0.5 or x1 > w - 0.5 or y1 > h - 0.5:
                continue
            if any(x0 <= bx1 + 2 and bx0 <= x1 + 2 and y0 <= by1 + 2 and by0 <= y1 + 2
                   for bx0, by0, bx1, by1 in occupied):
                continue
            mask = _rasterize(poly, h, w)
            if mask.sum() < 16:
                continue
            occupied.append((x0, y0, x1, y1))
            hue = (_HUE_CENTRES[cls] + rng.integers(-_HUE_JITTER, _HUE_JITTER + 1)) % 180
            hsv = np.uint8([[[hue, rng.integers(150, 256), rng.integers(150, 256)]]])
            colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
            # a soft shading across the shape, so that it is not a flat colour
            yy, xx = np.nonzero(mask)
            shade = 1.0 + 0.15 * ((xx - cx) / size * rng.uniform(-1, 1) +
                                  (yy - cy) / size * rng.uniform(-1, 1))
            img[yy, xx] = colour[None, :] * shade[:, None]
            instances.append(dict(cls=cls, polygon=poly, mask=mask))
            break
    img += rng.normal(0.0, 7.0, size=img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), instances


def _rng(seed: int, layout: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _LAYOUT_IDS[layout], _SPLIT_IDS[split], index])


# --------------------------------------------------------------------------- bookkeeping
def _params(kind: str, num_train: int, num_val: int, img_size, seed: int, max_objects: int):
    return dict(version=_VERSION, layout=kind, num_train=int(num_train), num_val=int(num_val),
                img_size=[int(img_size[0]), int(img_size[1])], seed=int(seed),
                max_objects=int(max_objects))


def _is_complete(base: str, params: dict) -> bool:
    try:
        with open(osp.join(base, _STAMP)) as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


def _prepare(base: str, subdirs: Sequence[str], overwrite: bool) -> None:
    """Clear our own earlier output (or refuse to touch a directory that is not ours)."""
    ours = osp.exists(osp.join(base, _STAMP))
    for sub in subdirs:
        path = osp.join(base, sub)
        if osp.isdir(path) and os.listdir(path):
            if not (ours or overwrite):
                raise FileExistsError(
                    f'{path} exists and was not written by the mmfame demo generator; '
                    'choose another root or pass overwrite=True')
            shutil.rmtree(path)
    if ours:
        os.remove(osp.join(base, _STAMP))


def _write_image(path: str, img: np.ndarray) -> None:
    cv2 = _cv2()
    ok = cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise OSError(f'could not write {path}')


# ------------------------------------------------------------------------------------ COCO
def _coco_split(base: str, split: str, folder: str, num: int, img_size, seed: int,
                max_objects: int) -> dict:
    os.makedirs(osp.join(base, folder), exist_ok=True)
    images, annotations = [], []
    h, w = img_size
    for i in range(num):
        img, instances = render_sample(_rng(seed, 'coco', split, i), img_size, max_objects)
        file_name = f'{i + 1:012d}.jpg'
        _write_image(osp.join(base, folder, file_name), img)
        images.append(dict(id=i + 1, file_name=file_name, height=h, width=w))
        for inst in instances:
            poly = inst['polygon']
            x0, y0 = (float(v) for v in poly.min(0))
            x1, y1 = (float(v) for v in poly.max(0))
            annotations.append(dict(
                id=len(annotations) + 1,
                image_id=i + 1,
                category_id=inst['cls'] + 1,
                bbox=[x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)],  # the polygon's extent
                area=int(inst['mask'].sum()),  # pixels, as COCO's RLE area
                iscrowd=0,
                segmentation=[[float(v) for v in poly.reshape(-1)]]))
    return dict(
        info=dict(description='mmfame synthetic shapes (COCO layout)', version=str(_VERSION),
                  year=2024, contributor='mmfame', date_created=''),
        licenses=[dict(id=1, name='CC0', url='')],
        images=images,
        annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(DEMO_CLASSES)])


def make_coco_demo(root: str, num_train: int = 160, num_val: int = 40,
                   img_size: Tuple[int, int] = (128, 128), seed: int = 0,
                   max_objects: int = 4, overwrite: bool = False) -> Dict[str, str]:
    """Write the shapes dataset in COCO layout under ``<root>/coco``; skip if already complete.

    Returns a dict with ``data_root``, ``train_ann``, ``val_ann``, ``train_img``, ``val_img``.
    """
    base = osp.join(root, 'coco')
    out = dict(data_root=base,
               train_ann=osp.join(base, 'annotations', 'instances_train2017.json'),
               val_ann=osp.join(base, 'annotations', 'instances_val2017.json'),
               train_img=osp.join(base, 'train2017'), val_img=osp.join(base, 'val2017'))
    params = _params('coco', num_train, num_val, img_size, seed, max_objects)
    if _is_complete(base, params) and all(osp.exists(p) for p in out.values()):
        return out
    os.makedirs(base, exist_ok=True)
    _prepare(base, ('train2017', 'val2017'), overwrite)
    os.makedirs(osp.join(base, 'annotations'), exist_ok=True)
    for split, folder, num, ann in (('train', 'train2017', num_train, out['train_ann']),
                                    ('val', 'val2017', num_val, out['val_ann'])):
        coco = _coco_split(base, split, folder, num, img_size, seed, max_objects)
        with open(ann, 'w') as f:
            json.dump(coco, f, separators=(',', ':'))
    with open(osp.join(base, _STAMP), 'w') as f:
        json.dump(params, f)
    return out


# ---------------------------------------------------------------------------------- ADE20K
def make_ade20k_demo(root: str, num_train: int = 160, num_val: int = 40,
                     img_size: Tuple[int, int] = (128, 128), seed: int = 0,
                     max_objects: int = 4, overwrite: bool = False) -> Dict[str, str]:
    """Write the shapes dataset in ADE20K layout under ``<root>/ade/ADEChallengeData2016``.

    Skips the work if already complete. Returns a dict with ``data_root`` (the
    ``ADEChallengeData2016`` folder, as mmseg's ADE20K configs expect), ``train_img``,
    ``train_ann``, ``val_img`` and ``val_ann`` folders.
    """
    cv2 = _cv2()
    base = osp.join(root, 'ade', 'ADEChallengeData2016')
    out = dict(data_root=base,
               train_img=osp.join(base, 'images', 'training'),
               train_ann=osp.join(base, 'annotations', 'training'),
               val_img=osp.join(base, 'images', 'validation'),
               val_ann=osp.join(base, 'annotations', 'validation'))
    params = _params('ade', num_train, num_val, img_size, seed, max_objects)
    if _is_complete(base, params) and all(osp.isdir(p) for p in out.values()):
        return out
    os.makedirs(base, exist_ok=True)
    _prepare(base, ('images', 'annotations'), overwrite)
    for split, tag, num in (('train', 'training', num_train), ('val', 'validation', num_val)):
        img_dir = osp.join(base, 'images', tag)
        ann_dir = osp.join(base, 'annotations', tag)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        prefix = 'ADE_train' if split == 'train' else 'ADE_val'
        for i in range(num):
            img, instances = render_sample(_rng(seed, 'ade', split, i), img_size, max_objects)
            label = np.zeros(img.shape[:2], np.uint8)  # 0: background, ignored by mmseg
            for inst in instances:
                label[inst['mask']] = ADE_LABEL_IDS[DEMO_CLASSES[inst['cls']]]
            stem = f'{prefix}_{i + 1:08d}'
            _write_image(osp.join(img_dir, stem + '.jpg'), img)
            if not cv2.imwrite(osp.join(ann_dir, stem + '.png'), label):
                raise OSError(f'could not write {stem}.png')
    with open(osp.join(base, _STAMP), 'w') as f:
        json.dump(params, f)
    return out


def make_demo(root: str = 'data/demo', num_train: int = 160, num_val: int = 40,
              img_size: Tuple[int, int] = (128, 128), seed: int = 0, max_objects: int = 4,
              overwrite: bool = False) -> Dict[str, Dict[str, str]]:
    """Both layouts: ``{'coco': make_coco_demo(...), 'ade': make_ade20k_demo(...)}``."""
    kw = dict(num_train=num_train, num_val=num_val, img_size=img_size, seed=seed,
              max_objects=max_objects, overwrite=overwrite)
    return dict(coco=make_coco_demo(root, **kw), ade=make_ade20k_demo(root, **kw))


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description='Write the synthetic shapes demo dataset (COCO and ADE20K layouts).')
    parser.add_argument('--out', default='data/demo', help='root folder (default: data/demo)')
    parser.add_argument('--num-train', type=int, default=160)
    parser.add_argument('--num-val', type=int, default=40)
    parser.add_argument('--size', type=int, nargs=2, default=(128, 128), metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-objects', type=int, default=4)
    parser.add_argument('--only', choices=('coco', 'ade'), default=None)
    parser.add_argument('--overwrite', action='store_true',
                        help='replace folders that the generator did not write')
    args = parser.parse_args(argv)
    kw = dict(num_train=args.num_train, num_val=args.num_val, img_size=tuple(args.size),
              seed=args.seed, max_objects=args.max_objects, overwrite=args.overwrite)
    if args.only in (None, 'coco'):
        print('COCO  :', make_coco_demo(args.out, **kw)['data_root'])
    if args.only in (None, 'ade'):
        print('ADE20K:', make_ade20k_demo(args.out, **kw)['data_root'])


if __name__ == '__main__':
    main()
