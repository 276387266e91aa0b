"""`ava show`: pictures of a capture (image, tracked mesh, keypoints, segmentation, rig, headset)
drawn from one sample loaded exactly as training loads it, to look at the data before training."""
