"""pycaffe's ``caffe.Classifier``: a ``Net`` that classifies images (resize, oversample or
centre crop, preprocess, forward, average), as ``python/classify.py`` uses it::

    classifier = caffe.Classifier("deploy.prototxt", "weights.caffemodel",
                                  image_dims=(256, 256), mean=mean, raw_scale=255,
                                  channel_swap=(2, 1, 0))
    probs = classifier.predict([caffe.io.load_image("cat.jpg")])     # (N, classes)
"""
import numpy as np

from . import io as caffe_io
from .layers.base import TEST
from .net import Net


class Classifier(Net):
    """A ``Net`` in TEST phase with a ``Transformer`` for its first input.

    ``image_dims``: (height, width) the images are resized to before cropping (default:
    the input blob's, i.e. whole-image crops); ``mean``, ``input_scale``, ``raw_scale``,
    ``channel_swap``: the ``caffe.io.Transformer`` settings (the transpose is (2, 0, 1)).
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)

        in_ = self.inputs[0]
        self.transformer = caffe_io.image_transformer(in_, self.blobs[in_].data.shape, mean=mean,
                                                      input_scale=input_scale, raw_scale=raw_scale,
                                                      channel_swap=channel_swap)

        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if not image_dims:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """Class scores of each (H, W, K) image in ``inputs``: an (N, classes) array of the
        first output.  ``oversample``: average over the ten crops of
        ``caffe.io.oversample`` (corners, centre and mirrors); otherwise the centre crop."""
        input_ = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1], inputs[0].shape[2]),
                          dtype=np.float32)
        for ix, in_ in enumerate(inputs):
            input_[ix] = caffe_io.resize_image(in_, self.image_dims)

        if oversample:
            input_ = caffe_io.oversample(input_, self.crop_dims)
        else:
            center = np.array(self.image_dims) / 2.0
            crop = np.tile(center, (1, 2))[0] + np.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0])
            crop = crop.astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]

        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, in_ in enumerate(input_):
            caffe_in[ix] = self.transformer.preprocess(self.inputs[0], in_)
        out = self.forward_all(**{self.inputs[0]: caffe_in})
        predictions = out[self.outputs[0]]

        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1))
            predictions = predictions.mean(1)
        return predictions
