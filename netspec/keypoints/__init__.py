"""The thesis's ch. 2 keypoint experiments on convnet features.

- :mod:`.annotations`: PASCAL VOC 2011 keypoints in the Berkeley poselets XML format.
- :mod:`.synthetic`: a deterministic synthetic keypoint set in that format.
- :mod:`.extract`: feature grids with rf centres (a net's layers, HOG-like, oracle parts).
- :mod:`.flow`: convnet flow (MRF + loopy BP with distance transforms), spline warping,
  keypoint transfer (Table 2.2).
- :mod:`.svm`: keypoint classification (Table 2.3) and prediction with a prior (Table 2.4).
- :mod:`.pck`: PCK at alpha = 0.1, 0.05, 0.025.
- :mod:`.tiny_net`: a small AlexNet-shaped deploy net for tests and defaults.

``netspec keypoints flow|classify|predict`` runs each experiment end to end.
"""
