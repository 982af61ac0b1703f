"""The synthetic demo data (mmfame.datasets.demo): deterministic, real COCO and ADE20K layouts.

Small, non-square images (H != W catches swapped axes); the whole module takes seconds.
"""
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

from mmfame.datasets import (ADE_LABEL_IDS, DEMO_CLASSES, make_ade20k_demo, make_coco_demo,
                             make_demo)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
H, W = 64, 80
NUM_TRAIN, NUM_VAL = 6, 4
NO_STACK = 'the OpenMMLab stack (mmcv, mmdet, mmseg) is not installed'
KW = dict(num_train=NUM_TRAIN, num_val=NUM_VAL, img_size=(H, W))


def tree_hashes(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('demo'))
    return root, make_demo(root, seed=0, **KW)


def test_layout_and_returned_paths(demo):
    root, paths = demo
    coco, ade = paths['coco'], paths['ade']
    assert coco['data_root'] == osp.join(root, 'coco')
    assert ade['data_root'] == osp.join(root, 'ade', 'ADEChallengeData2016')
    assert sorted(os.listdir(coco['train_img'])) == [f'{i:012d}.jpg'
                                                     for i in range(1, NUM_TRAIN + 1)]
    assert len(os.listdir(coco['val_img'])) == NUM_VAL
    for split, num, prefix in (('train', NUM_TRAIN, 'ADE_train'), ('val', NUM_VAL, 'ADE_val')):
        imgs = sorted(os.listdir(ade[f'{split}_img']))
        anns = sorted(os.listdir(ade[f'{split}_ann']))
        assert len(imgs) == num and all(n.startswith(prefix) and n.endswith('.jpg') for n in imgs)
        assert [n[:-4] for n in anns] == [n[:-4] for n in imgs]
        assert all(n.endswith('.png') for n in anns)
    size = sum(osp.getsize(osp.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    assert size < 1_000_000


def test_deterministic(demo, tmp_path):
    root, _ = demo
    again = str(tmp_path / 'again')
    make_demo(again, seed=0, **KW)
    first = tree_hashes(root)
    assert first and tree_hashes(again) == first
    other = str(tmp_path / 'other')
    make_demo(other, seed=1, **KW)
    second = tree_hashes(other)
    assert second.keys() == first.keys()
    assert sum(second[k] != first[k] for k in first if k.endswith(('.jpg', '.png'))) > 0.9 * sum(
        k.endswith(('.jpg', '.png')) for k in first)


def test_idempotent_and_safe(tmp_path):
    root = str(tmp_path)
    paths = make_coco_demo(root, num_train=2, num_val=1, img_size=(32, 32))
    ann = paths['train_ann']
    mtime = os.stat(ann).st_mtime_ns
    make_coco_demo(root, num_train=2, num_val=1, img_size=(32, 32))  # complete: nothing rewritten
    assert os.stat(ann).st_mtime_ns == mtime
    make_coco_demo(root, num_train=3, num_val=1, img_size=(32, 32))  # other params: regenerate
    with open(ann) as f:
        assert len(json.load(f)['images']) == 3
    assert len(os.listdir(paths['train_img'])) == 3
    # a folder the generator did not write is never deleted
    foreign = tmp_path / 'foreign'
    (foreign / 'ade' / 'ADEChallengeData2016' / 'images').mkdir(parents=True)
    (foreign / 'ade' / 'ADEChallengeData2016' / 'images' / 'mine.jpg').write_bytes(b'x')
    with pytest.raises(FileExistsError):
        make_ade20k_demo(str(foreign), num_train=1, num_val=1, img_size=(32, 32))
    assert (foreign / 'ade' / 'ADEChallengeData2016' / 'images' / 'mine.jpg').exists()


def test_command_line(tmp_path):
    out = tmp_path / 'cli'
    proc = subprocess.run(
        [sys.executable, '-m', 'mmfame.datasets.demo', '--out', str(out), '--num-train', '2',
         '--num-val', '1', '--size', '32', '48', '--only', 'coco'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(out / 'coco' / 'annotations' / 'instances_val2017.json') as f:
        assert json.load(f)['images'][0]['width'] == 48
    assert not (out / 'ade').exists()


def test_coco_json_with_pycocotools(demo):
    cv2 = pytest.importorskip('cv2')
    COCO = pytest.importorskip('pycocotools.coco').COCO
    _, paths = demo
    for split, num in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        coco = COCO(paths['coco'][f'{split}_ann'])
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(DEMO_CLASSES)
        assert sorted(coco.getImgIds()) == list(range(1, num + 1))
        ann_ids = [a['id'] for a in coco.dataset['annotations']]
        assert len(set(ann_ids)) == len(ann_ids)
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            assert (info['height'], info['width']) == (H, W)
            img = cv2.imread(osp.join(paths['coco'][f'{split}_img'], info['file_name']))
            assert img.shape == (H, W, 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert 1 <= len(anns) <= 4
            union = np.zeros((H, W), np.int32)
            for ann in anns:
                assert ann['iscrowd'] == 0 and ann['category_id'] in (1, 2, 3)
                x, y, w, h = ann['bbox']
                assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= W and y + h <= H
                poly = np.asarray(ann['segmentation'][0], float).reshape(-1, 2)
                assert len(poly) >= 3
                np.testing.assert_allclose(poly.min(0), [x, y], atol=1e-6)
                np.testing.assert_allclose(poly.max(0), [x + w, y + h], atol=0.011)
                mask = coco.annToMask(ann)
                assert mask.shape == (H, W)
                ys, xs = np.nonzero(mask)
                # pycocotools' rasterisation of the polygon agrees with the painted pixels
                assert abs(xs.min() - x) <= 2 and abs(ys.min() - y) <= 2
                assert abs(xs.max() + 1 - (x + w)) <= 2 and abs(ys.max() + 1 - (y + h)) <= 2
                assert 0.8 * ann['area'] <= mask.sum() <= 1.25 * ann['area']
                union += mask
            assert union.max() == 1  # instances do not overlap


def test_mmdet_coco_dataset_and_metric(demo):
    pytest.importorskip('mmdet', reason=NO_STACK)
    import torch
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations
    from mmdet.evaluation import CocoMetric
    from mmcv.transforms import LoadImageFromFile
    _, paths = demo
    coco = paths['coco']
    metainfo = dict(classes=DEMO_CLASSES)
    train = CocoDataset(data_root=coco['data_root'], ann_file='annotations/instances_train2017.json',
                        data_prefix=dict(img='train2017/'), metainfo=metainfo,
                        filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=[
                            LoadImageFromFile(), LoadAnnotations(with_bbox=True, with_mask=True)])
    assert len(train) == NUM_TRAIN
    sample = train[0]
    assert sample['img'].shape == (H, W, 3)
    assert sample['gt_masks'].masks.shape[1:] == (H, W)
    assert len(sample['gt_bboxes']) == len(sample['gt_masks']) == len(sample['gt_bboxes_labels'])

    val = CocoDataset(data_root=coco['data_root'], ann_file='annotations/instances_val2017.json',
                      data_prefix=dict(img='val2017/'), metainfo=metainfo, test_mode=True)
    assert len(val) == NUM_VAL
    labels = [i['bbox_label'] for d in (train, val) for k in range(len(d))
              for i in d.get_data_info(k)['instances']]
    assert set(labels) <= {0, 1, 2} and len(set(labels)) >= 2

    # The ground truth as predictions: CocoMetric must give a perfect bbox and segm mAP.
    from pycocotools.coco import COCO
    gt = COCO(coco['val_ann'])
    metric = CocoMetric(ann_file=coco['val_ann'], metric=['bbox', 'segm'])
    metric.dataset_meta = val.metainfo
    for k in range(len(val)):
        info = val.get_data_info(k)
        anns = gt.loadAnns(gt.getAnnIds(imgIds=info['img_id']))
        boxes = [[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                  a['bbox'][1] + a['bbox'][3]] for a in anns]
        metric.process({}, [dict(
            img_id=info['img_id'], ori_shape=(info['height'], info['width']),
            pred_instances=dict(
                bboxes=torch.tensor(boxes, dtype=torch.float32),
                scores=torch.ones(len(anns)),
                labels=torch.tensor([a['category_id'] - 1 for a in anns]),
                masks=torch.from_numpy(np.stack([gt.annToMask(a) for a in anns]).astype(bool))))])
    results = metric.evaluate(len(val))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)
    assert results['coco/segm_mAP'] == pytest.approx(1.0)


def test_mmseg_ade20k_dataset(demo):
    pytest.importorskip('mmseg', reason=NO_STACK)
    import cv2
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import ADE20KDataset
    from mmseg.datasets.transforms import LoadAnnotations
    _, paths = demo
    ade = paths['ade']
    assert sorted(ADE_LABEL_IDS.values()) == [1, 2, 3]
    for split, tag, num in (('train', 'training', NUM_TRAIN), ('val', 'validation', NUM_VAL)):
        ds = ADE20KDataset(
            data_root=ade['data_root'],
            data_prefix=dict(img_path=f'images/{tag}', seg_map_path=f'annotations/{tag}'),
            pipeline=[LoadImageFromFile(), LoadAnnotations(reduce_zero_label=True)])
        assert len(ds) == num
        assert len(ds.metainfo['classes']) == 150
        seen = set()
        for k in range(num):
            raw = cv2.imread(ds.get_data_info(k)['seg_map_path'], cv2.IMREAD_UNCHANGED)
            assert raw.dtype == np.uint8 and raw.shape == (H, W)
            assert set(np.unique(raw)) <= {0, 1, 2, 3} and 0 in raw and raw.max() > 0
            sample = ds[k]
            assert sample['img'].shape == (H, W, 3)
            seg = sample['gt_seg_map']
            assert seg.shape == (H, W)
            np.testing.assert_array_equal(seg == 255, raw == 0)  # background is ignored
            np.testing.assert_array_equal(seg[raw > 0], raw[raw > 0] - 1)
            seen |= set(np.unique(seg[raw > 0]).tolist())
        assert seen <= {0, 1, 2}
        if split == 'train':
            assert len(seen) >= 2


def test_rendered_masks_match_their_polygons():
    """The painted pixels are the polygon as pycocotools rasterises it (up to edge pixels)."""
    mask_utils = pytest.importorskip('pycocotools.mask')
    from mmfame.datasets import render_sample
    ious = []
    for seed in range(20):
        img, instances = render_sample(np.random.default_rng(seed), (H, W))
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert 1 <= len(instances) <= 4
        for inst in instances:
            assert 0 <= inst['cls'] < len(DEMO_CLASSES)
            assert inst['mask'].shape == (H, W) and inst['mask'].sum() >= 16
            rle = mask_utils.merge(mask_utils.frPyObjects([inst['polygon'].reshape(-1).tolist()],
                                                          H, W))
            ref = mask_utils.decode(rle).astype(bool)
            ious.append((ref & inst['mask']).sum() / (ref | inst['mask']).sum())
    assert min(ious) > 0.75 and np.mean(ious) > 0.95
