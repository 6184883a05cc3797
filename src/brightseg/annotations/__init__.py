"""Annotations in and out: each format's reader beside its writer.

* :mod:`.cvat` -- CVAT exports ("CVAT for images 1.1" XML with polygons and RLE masks,
  "COCO 1.0" JSON, CVAT's zip) into instance labels, binary masks and a manifest;
  CVAT's and COCO's run-length encodings.
* :mod:`.export` -- the writers of those formats (the demo's exports; round-trip tests).
* :mod:`.maskfolder` -- a folder of masks (binary, labels, RGB, JPEG) paired with images,
  and pre-tiled image/mask patch sets.
* :mod:`.livecell` -- the LIVECell dataset (COCO JSON per cell line) for external validation.
"""
