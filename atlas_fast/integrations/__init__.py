"""Drop-in use of atlas_fast inside other training code bases (atlas: facebookresearch/atlas)."""
