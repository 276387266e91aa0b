"""`ava view`: a local web viewer of a trained avatar (viser), rendered with ava.kernels: orbit
camera, identity choice, expression playback and scaling, cross-identity driving."""
