"""Pictures and videos of a trained model: image strips, MP4 writing, cross-identity and orbit renders
(`cross_id`), and an avatar driven by headset frames (`driven`, `ava render --driver-checkpoint`)."""
