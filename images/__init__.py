"""Sample disk images: phony-but-inspectable Windows guests (and bad inputs) built from declarative specs."""
