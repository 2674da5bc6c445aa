"""For the model-zoo tests: a real HTTP server on 127.0.0.1 that serves files the ways
networks and servers fail, a tiny DCCNeXt classifier trained one step by MMEngine's Runner,
and temporary model indexes."""
import collections
import functools
import http.server
import os
import os.path as osp
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from mmengine.model import BaseModel
from mmengine.runner import Runner

from mmdccnext.apis import publish_checkpoint
from mmdccnext.apis.download import MIRROR_ENV
from mmdccnext.apis.zoo import INDEX_ENV
from mmdccnext.models import DCCNeXt

# 4 stages, one block each; stages 3-4 are DCConv stages as in B0-B4
TINY_ARCH = dict(channels=[8, 16, 24, 32], depths=[1, 1, 1, 1])
TINY_INPUT = (2, 3, 64, 64)


class TinyClassifier(BaseModel):
    """DCCNeXt backbone (keys ``backbone.*``, as in the zoo's classifiers) and a linear head."""

    def __init__(self, backbone_init_cfg=None):
        super().__init__()
        init = {} if backbone_init_cfg is None else dict(init_cfg=backbone_init_cfg)
        self.backbone = DCCNeXt(arch=TINY_ARCH, **init)
        self.head = nn.Linear(TINY_ARCH['channels'][-1], 5)

    def forward(self, inputs, labels=None, mode='tensor'):
        logits = self.head(self.backbone(torch.stack(list(inputs)))[0])
        if mode == 'loss':
            return dict(loss=F.cross_entropy(logits, torch.stack(list(labels))))
        return logits


class TinyImages(torch.utils.data.Dataset):

    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(TINY_INPUT[1:], generator=g), labels=torch.tensor(i % 5))


def fixed_input():
    return torch.randn(TINY_INPUT, generator=torch.Generator().manual_seed(123))


def outputs(model):
    model.eval()
    with torch.no_grad():
        return model(fixed_input())


def train_tiny_classifier(work_dir):
    """One AdamW step with MMEngine's Runner; returns (model, path of ``iter_1.pth``), the
    checkpoint as MMEngine writes it (optimizer, message hub, schedulers, meta)."""
    torch.manual_seed(0)
    model = TinyClassifier()
    runner = Runner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=f'tiny_{osp.basename(str(work_dir))}',
        train_dataloader=dict(dataset=TinyImages(), sampler=dict(type='DefaultSampler',
                                                                 shuffle=False),
                              batch_size=2, num_workers=0),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-2)),
        param_scheduler=dict(type='LinearLR', start_factor=0.5, by_epoch=False, end=2),
        train_cfg=dict(by_epoch=False, max_iters=1),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        default_scope='mmengine')
    runner.train()
    return runner.model, osp.join(str(work_dir), 'iter_1.pth')


def write_index(root, models):
    """A model-index.yml importing one metafile with ``models``; returns its path."""
    metafile = osp.join(str(root), 'configs', 'tiny', 'metafile.yml')
    os.makedirs(osp.dirname(metafile), exist_ok=True)
    with open(metafile, 'w') as f:
        yaml.safe_dump(dict(Collections=[dict(Name='Tiny')], Models=models), f)
    index = osp.join(str(root), 'model-index.yml')
    with open(index, 'w') as f:
        yaml.safe_dump(dict(Import=['configs/tiny/metafile.yml']), f)
    return index


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def __init__(self, zoo, *args, **kwargs):
        self.zoo = zoo
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):
        with self.zoo.lock:
            self.zoo.hits[self.path] += 1
            hit = self.zoo.hits[self.path]
        route = self.zoo.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        behaviour, data = route
        if behaviour == 500:
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header('Content-Type', 'application/octet-stream')
        if str(behaviour).startswith('no-length'):  # the body ends where the connection does
            self.send_header('Connection', 'close')
            self.end_headers()
            self.wfile.write(data if behaviour == 'no-length' else data[:len(data) // 2])
            self.close_connection = True
            return
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if behaviour == 'hold':  # send half, then nothing until the test releases it
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.zoo.release.wait()
            self.close_connection = True
        elif behaviour == 'truncate':  # announce all, send half, close cleanly
            self.wfile.write(data[:len(data) // 2])
            self.close_connection = True
        elif behaviour == 'drop-once' and hit == 1:  # send half, then reset the connection
            self.wfile.write(data[:len(data) // 2])
            time.sleep(0.1)  # let the client read what was sent before the reset
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack('ii', 1, 0))
            self.connection.close()
            self.close_connection = True
        else:
            self.wfile.write(data)


class ZooServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a thread.

    ``add(path, data, behaviour)``: ``'ok'``, ``'truncate'`` (Content-Length larger than the
    body, then close), ``'drop-once'`` (connection reset mid-way on the first request only)
    ``'no-length'`` / ``'no-length-cut'`` (no Content-Length, the whole / half the body,
    then close), ``'hold'`` (half the body, then wait for ``release``) or ``500``; unknown
    paths answer 404. ``hits[path]`` counts requests.
    """

    def __init__(self):
        self.routes = {}
        self.hits = collections.Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                     functools.partial(_Handler, self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05, ), daemon=True)
        self.thread.start()
        self.base = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.running = True

    def add(self, path, data, behaviour='ok'):
        self.routes[path] = (behaviour, data)
        return self.base + path

    def stop(self):
        self.release.set()
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.running = False


# Fixtures; test modules import them by name.


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """A fresh ``$TORCH_HOME`` (the real cache stays untouched); returns its checkpoint cache."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.delenv(INDEX_ENV, raising=False)
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


@pytest.fixture
def zoo_server():
    server = ZooServer()
    yield server
    server.stop()


@pytest.fixture(scope='module')
def published(tmp_path_factory):
    """The tiny classifier after one training step, published as the zoo would be."""
    root = tmp_path_factory.mktemp('published')
    model, checkpoint = train_tiny_classifier(root / 'work')
    result = publish_checkpoint(checkpoint, str(root / 'tiny-dccnext_in1k.pth'), date='20250101')
    with open(result.path, 'rb') as f:
        data = f.read()
    model.eval()
    with torch.no_grad():
        backbone_outputs = model.backbone(fixed_input())
    return SimpleNamespace(result=result, data=data, file_name=osp.basename(result.path),
                           outputs=outputs(model), backbone_outputs=backbone_outputs,
                           training_checkpoint=checkpoint)
