"""Pictures and videos of a trained model: image strips, MP4 writing, cross-identity and orbit renders."""
