"""Data: synthetic growth-stage images, captions, TFDS builders and the Grain input pipeline.

* Rendering: :mod:`.synthetic` (images of each growth stage), :mod:`.render_shapes` (the shapes
  drawn), :mod:`.fungalzsl_generator` (the FungalZSL authors' generator, the ``paper`` preset),
  :mod:`.scene_params` (what one image shows), :mod:`.contact_sheets` (``fungizsl render``),
  :mod:`.robustness` (test renders under shifted conditions), :mod:`.unseen_growth` +
  :mod:`.unseen_renderer` (an independent generator, for evaluation only).
* Captions: :mod:`.caption_text` (the Caption record and text helpers), :mod:`.caption_files`
  (the paper's JSON files and JSONL files), :mod:`.captions` (named caption sources),
  :mod:`.scene_phrases` + :mod:`.scene_captions` (captions written from an image's scene),
  :mod:`.llm_client` + :mod:`.llm_captions` (``fungizsl captions generate``).
* Datasets on disk: :mod:`.builders` (TFDS ``array_record`` builders, ``fungizsl build``).
* Input pipeline (Grain): :mod:`.pipeline` is the entry point (it re-exports the main names);
  the pieces are :mod:`.sources`, :mod:`.records`, :mod:`.transforms` (with :mod:`.augment`),
  :mod:`.caption_table`, :mod:`.scene_pipeline` (per-image captions), :mod:`.datasets`,
  :mod:`.observations` and :mod:`.iterators`.
"""
