"""Independent PyTorch modules following the official MLVICX architecture.

Written for the parity tests from the official code's structure (torchvision
ResNet18 layout, CBAM blocks, official state-dict names), with the per-level
1x1 convs created eagerly and the multi-level branch computed the official,
expensive way (resize to 64x64, conv, sum, adaptive pool).
"""
import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):

  def __init__(self, inplanes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class TorchResNet(nn.Module):
  """torchvision.models.resnet18's module names and order."""

  def __init__(self, layers=(2, 2, 2, 2), width=64, num_classes=1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = width
    for i, n in enumerate(layers):
      planes = width * 2**i
      blocks = []
      for j in range(n):
        blocks.append(BasicBlock(inplanes, planes, 2 if i > 0 and j == 0 else 1))
        inplanes = planes
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(inplanes, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return torch.flatten(self.avgpool(x), 1)


class ChannelAttention(nn.Module):

  def __init__(self, c, r):
    super().__init__()
    self.fc = nn.Sequential(nn.Conv2d(c, c // r, 1, bias=False), nn.ReLU(),
                            nn.Conv2d(c // r, c, 1, bias=False))

  def forward(self, x):
    avg = self.fc(F.adaptive_avg_pool2d(x, 1))
    mx = self.fc(F.adaptive_max_pool2d(x, 1))
    return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):

  def __init__(self, k=7):
    super().__init__()
    self.conv1 = nn.Conv2d(2, 1, k, padding=k // 2, bias=False)

  def forward(self, x):
    d = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True)[0]], 1)
    return torch.sigmoid(self.conv1(d))


class ContextBottleneck(nn.Module):

  def __init__(self, c, r=2):
    super().__init__()
    self.cam = ChannelAttention(c, r)
    self.sam = SpatialAttention()

  def forward(self, x):
    x = self.cam(x) * x
    return self.sam(x) * x


class ProjectionMLP(nn.Module):

  def __init__(self, in_dim, widths):
    super().__init__()
    for i, w in enumerate(widths):
      mods = [nn.Linear(in_dim, w), nn.BatchNorm1d(w)]
      if i < len(widths) - 1:
        mods.append(nn.ReLU(inplace=True))
      setattr(self, f'l{i + 1}', nn.Sequential(*mods))
      in_dim = w
    self.n = len(widths)

  def forward(self, x):
    for i in range(self.n):
      x = getattr(self, f'l{i + 1}')(x)
    return x


class ConvHead(nn.Module):

  def __init__(self, in_ch, widths, pool=4):
    super().__init__()
    w1, w2, w3 = widths
    self.projection = nn.Sequential(
        nn.AdaptiveAvgPool2d((pool, pool)), nn.Flatten(),
        nn.Linear(in_ch * pool * pool, w1), nn.BatchNorm1d(w1), nn.ReLU(inplace=True),
        nn.Linear(w1, w2), nn.BatchNorm1d(w2), nn.ReLU(inplace=True),
        nn.Linear(w2, w3), nn.BatchNorm1d(w3))

  def forward(self, x):
    return self.projection(x)


class ResizeProject(nn.Module):

  def __init__(self, in_channels, out_channels=512, size=64, widths=(4096,) * 3,
               aggregation='sum'):
    super().__init__()
    self.size, self.aggregation = size, aggregation
    convs = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
    head_in = out_channels * (len(in_channels) if aggregation == 'concat' else 1)
    # Registered in the official order (conv_head in __init__, the convs appended
    # later in forward), so state_dict() lists keys as the official model does;
    # created in this order so seeded weights stay as they were.
    self.conv_head = ConvHead(head_in, widths)
    self.convs = convs

  def forward(self, maps):
    ys = [conv(F.interpolate(m, size=self.size, mode='bilinear', align_corners=False))
          for conv, m in zip(self.convs, maps)]
    x = torch.stack(ys).sum(0) if self.aggregation == 'sum' else torch.cat(ys, 1)
    return self.conv_head(x)


class Encoder(nn.Module):
  """Official EncoderwithProjection: names encoder/projetion/cbt1..5/resize_project."""

  def __init__(self, layers=(2, 2, 2, 2), width=64, head=(4096,) * 3, ml_head=(4096,) * 3,
               ml_channels=512, ml_size=64, aggregation='sum', reduction=2):
    super().__init__()
    base = TorchResNet(layers, width)
    self.encoder = nn.Sequential(*list(base.children())[:-1])
    final = width * 2**(len(layers) - 1)
    self.projetion = ProjectionMLP(final, head)
    chans = [width] + [width * 2**i for i in range(len(layers))]
    for i, c in enumerate(chans):
      setattr(self, f'cbt{i + 1}', ContextBottleneck(c, reduction))
    self.resize_project = ResizeProject(chans, ml_channels, ml_size, ml_head, aggregation)

  def forward(self, x):
    maps = []
    x = self.cbt1(self.encoder[:3](x)); maps.append(x)
    x = self.cbt2(self.encoder[3:5](x)); maps.append(x)
    x = self.cbt3(self.encoder[5](x)); maps.append(x)
    x = self.cbt4(self.encoder[6](x)); maps.append(x)
    x = self.cbt5(self.encoder[7](x)); maps.append(x)
    z = self.projetion(torch.flatten(self.encoder[8](x), 1))
    return z, self.resize_project(maps)


class MLVICXTorch(nn.Module):
  """The trainer's model object: its state dict has the `encoder.` prefix."""

  def __init__(self, **kw):
    super().__init__()
    self.encoder = Encoder(**kw)

  def forward(self, x):
    return self.encoder(x)


def randomise_bn_stats(module: nn.Module, seed: int = 0):
  """Perturbs running statistics and affine BN params so eval mode is a real test."""
  g = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
      n = m.num_features
      with torch.no_grad():
        m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
        m.bias.copy_(0.1 * torch.randn(n, generator=g))
