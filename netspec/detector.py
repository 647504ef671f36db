"""pycaffe's ``caffe.Detector``: a ``Net`` that classifies windows of images (R-CNN style
crops, optionally with a context border), as ``python/detect.py`` uses it::

    detector = caffe.Detector("deploy.prototxt", "weights.caffemodel", mean=mu,
                              raw_scale=255, channel_swap=(2, 1, 0), context_pad=16)
    detections = detector.detect_windows([("cat.jpg", np.array([[0, 0, 100, 120]]))])
    # [{"window": ..., "prediction": ..., "filename": "cat.jpg"}, ...]

Windows are (ymin, xmin, ymax, xmax).  Selective-search proposals need pycaffe's
external package ``selective_search_ijcv_with_python`` (MATLAB); netspec does not
include it.
"""
import os

import numpy as np

from . import io as caffe_io
from .errors import NetspecError
from .layers.base import TEST
from .net import Net


class Detector(Net):
    """A ``Net`` in TEST phase with a ``Transformer`` for its first input.

    ``mean``, ``input_scale``, ``raw_scale``, ``channel_swap``: the ``caffe.io.Transformer``
    settings (the transpose is (2, 0, 1)); ``context_pad``: pixels of the net's input
    that show context around the window, as in R-CNN feature extraction.
    """

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)

        in_ = self.inputs[0]
        self.transformer = caffe_io.image_transformer(in_, self.blobs[in_].data.shape, mean=mean,
                                                      input_scale=input_scale, raw_scale=raw_scale,
                                                      channel_swap=channel_swap)

        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Classify windows of images: ``images_windows`` is an iterable of
        ``(image filename, windows)``; each window is cropped (``crop``) and warped to the
        net's input size.  Returns ``[{"window", "prediction", "filename"}, ...]`` in order."""
        images_windows = list(images_windows)    # walked twice (a zip would be spent after the first)
        window_inputs = []
        for image_fname, windows in images_windows:
            image = caffe_io.load_image(image_fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))

        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2]) + self.blobs[in_].data.shape[2:],
                            dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        out = self.forward_all(**{in_: caffe_in})
        predictions = out[self.outputs[0]]

        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix], "filename": image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """``detect_windows`` over Selective Search proposals, from the external package
        ``selective_search_ijcv_with_python`` (pycaffe's); a ``NetspecError`` when it is not
        importable."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise NetspecError(
                "Detector.detect_selective_search: selective search is not included in netspec "
                "(pycaffe imports the external package selective_search_ijcv_with_python, "
                "https://github.com/sergeyk/selective_search_ijcv_with_python, which runs MATLAB); "
                "put it on PYTHONPATH, or compute windows yourself and call "
                "detect_windows([(filename, windows), ...])") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(list(zip(image_fnames, windows_list)))

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of an (H, W, K) image; with ``context_pad``,
        a larger box warped so that a ``context_pad`` border of the net's input is
        context, filled with the mean (in image space) where the box leaves the image."""
        crop = im[window[0]:window[2], window[1]:window[3]]

        if self.context_pad:
            box = np.array(window, copy=True)
            crop_size = self.blobs[self.inputs[0]].width   # assumes square inputs
            scale = crop_size / (1. * crop_size - self.context_pad * 2)
            half_h = (box[2] - box[0] + 1) / 2.
            half_w = (box[3] - box[1] + 1) / 2.
            center = (box[0] + half_h, box[1] + half_w)
            scaled_dims = scale * np.array((-half_h, -half_w, half_h, half_w))
            box = np.round(np.tile(center, 2) + scaled_dims)
            full_h = box[2] - box[0] + 1
            full_w = box[3] - box[1] + 1
            scale_h = crop_size / full_h
            scale_w = crop_size / full_w
            pad_y = round(max(0, -box[0]) * scale_h)   # how far the box leaves the image
            pad_x = round(max(0, -box[1]) * scale_w)

            im_h, im_w = im.shape[:2]
            box = np.clip(box, 0., [im_h, im_w, im_h, im_w])
            clip_h = box[2] - box[0] + 1
            clip_w = box[3] - box[1] + 1
            assert clip_h > 0 and clip_w > 0
            crop_h = round(clip_h * scale_h)
            crop_w = round(clip_w * scale_w)
            if pad_y + crop_h > crop_size:
                crop_h = crop_size - pad_y
            if pad_x + crop_w > crop_size:
                crop_w = crop_size - pad_x

            # the box's pixels, warped, placed on a mean-filled input
            y0, x0, y1, x1 = (int(v) for v in box)
            context_crop = im[y0:y1, x0:x1]
            context_crop = caffe_io.resize_image(context_crop, (crop_h, crop_w))
            crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
            crop[pad_y:(pad_y + crop_h), pad_x:(pad_x + crop_w)] = context_crop

        return crop

    def configure_crop(self, context_pad):
        """Set the crop dimensions and the context border; with a border, also the mean in
        image space (un-transposed, un-swapped, divided by raw_scale) that fills it."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if self.context_pad:
            transpose = self.transformer.transpose.get(in_)
            channel_order = self.transformer.channel_swap.get(in_)
            raw_scale = self.transformer.raw_scale.get(in_)
            mean = self.transformer.mean.get(in_)
            if mean is not None:
                inv_transpose = [transpose[t] for t in transpose]
                crop_mean = mean.copy().transpose(inv_transpose)
                if channel_order is not None:
                    channel_order = list(channel_order)
                    crop_mean = crop_mean[:, :, [channel_order.index(i) for i in range(crop_mean.shape[2])]]
                if raw_scale is not None:
                    crop_mean /= raw_scale
                self.crop_mean = crop_mean
            else:
                self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
