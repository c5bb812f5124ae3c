"""Hardware-in-the-loop: the same scenarios over a QEMU guest of an image or a real board over SSH."""
