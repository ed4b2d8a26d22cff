/* 人脸采集 / 证件照采集 (/app/photo?kind=face|id_photo): a photo from the camera (capture) or the album, a
   preview drawn on a canvas (createImageBitmap: no blob: URL, so the page's image policy stays 'self'),
   and the upload: the image bytes and their Content-Type to POST /api/v1/photos/<kind>. A JPEG or PNG
   within the server's size cap goes as it is; a larger one (a camera's picture) or another format
   (HEIC, WebP) is drawn again at most SCALED_MAX_SIDE_PX on its long side as a JPEG, as the server
   expects of the app. The server checks the photo; its reason for refusing one (422: no face found,
   too dark, too small, ...) shows next to the field. GET /api/v1/photos says which kinds the holder
   has on file. */
"use strict";
(function (ykt) {
  const shell = ykt.shell;
  const {texts, $, say} = shell;
  const KINDS = ["face", "id_photo"];
  const SENT_AS_IS = ["image/jpeg", "image/png"];          // what the server takes
  const MAX_PICKED_BYTES = 40 * 1024 * 1024;               // a picture larger than this is no photo
  const SCALED_MAX_SIDE_PX = 2000;
  const SCALED_QUALITIES = [0.85, 0.75, 0.6];
  const PREVIEW_CSS_PX = 240;
  const asked = new URLSearchParams(location.search).get("kind");
  const kind = KINDS.includes(asked) ? asked : "face";

  function title() {
    const heading = texts["photo_" + kind];
    say("page-heading", heading);
    say("photo-title", heading);
    say("photo-about", texts["photo_" + kind + "_about"]);
    document.title = heading + " - " + texts.app_name;
  }

  /* Which kinds the server has: {photos: [{kind, taken, ...}]}. */
  function kinds_on_file(answer) {
    return (answer.photos || []).filter((photo) => photo.taken).map((photo) => photo.kind);
  }

  async function load_state() {
    try {
      const answer = await shell.call("GET", "/photos");
      say("photo-state", kinds_on_file(answer).includes(kind) ? texts.photo_on_file : texts.photo_none);
    } catch (error) {
      if (error instanceof shell.ApiError && error.offline) shell.note_offline(true);
      say("photo-state", "");
    }
  }

  function picked() {
    return $("photo-file").files && $("photo-file").files[0];
  }

  function check(file) {
    if (!file) return shell.field_error("photo-file", texts.photo_required);
    if (!file.type.startsWith("image/")) return shell.field_error("photo-file", texts.photo_type);
    if (file.size > MAX_PICKED_BYTES) {
      return shell.field_error("photo-file", shell.fill(texts.photo_too_big, MAX_PICKED_BYTES / 1024 / 1024));
    }
    return file;
  }

  /* {data, type}: the file itself when the server takes it as it is, else a JPEG drawn from it. */
  async function upload_body(file) {
    const cap = shell.config.photo_max_bytes;
    if (SENT_AS_IS.includes(file.type) && file.size <= cap) return {data: file, type: file.type};
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, SCALED_MAX_SIDE_PX / Math.max(bitmap.width, bitmap.height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    for (const quality of SCALED_QUALITIES) {
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
      if (blob && blob.size <= cap) return {data: blob, type: "image/jpeg"};
    }
    return null;
  }

  async function preview() {
    shell.clear_errors($("photo-form"));
    say("photo-result", "");
    const canvas = $("photo-preview");
    const file = check(picked());
    if (!file) return (canvas.hidden = true);
    try {
      const bitmap = await createImageBitmap(file);
      const ratio = window.devicePixelRatio || 1;
      const scale = Math.min(1, PREVIEW_CSS_PX * ratio / Math.max(bitmap.width, bitmap.height));
      canvas.width = Math.round(bitmap.width * scale);
      canvas.height = Math.round(bitmap.height * scale);
      canvas.style.width = canvas.width / ratio + "px";
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      bitmap.close();
      canvas.hidden = false;
    } catch (error) {
      canvas.hidden = true;
      shell.field_error("photo-file", texts.photo_unreadable);
    }
  }

  async function on_submit(event) {
    event.preventDefault();
    const form = event.target;
    shell.clear_errors(form);
    say("photo-result", "");
    const file = check(picked());
    if (!file) return shell.focus_error(form);
    await shell.busy($("photo-submit"), async () => {
      let body;
      try {
        body = await upload_body(file);
      } catch (error) {
        body = null;
      }
      if (!body) {
        shell.field_error("photo-file", texts.photo_unreadable);
        return shell.focus_error(form);
      }
      try {
        await shell.call("POST", "/photos/" + kind, {raw: body, timeout_ms: 30000});
        say("photo-result", texts.photo_done);
        say("photo-state", texts.photo_on_file);
      } catch (error) {
        // every refusal of the photo itself (422 and the like) is about the one field
        if (error instanceof shell.ApiError && error.status !== 401 && !error.offline && error.status < 500) {
          shell.field_error("photo-file", shell.error_text(error));
          return shell.focus_error(form);
        }
        shell.refuse(form, error);
      }
    });
  }

  async function start() {
    shell.show("view-page");
    await load_state();
  }

  title();
  $("photo-file").addEventListener("change", preview);
  $("photo-form").addEventListener("submit", on_submit);
  shell.page(start);
})(self.ykt = self.ykt || {});
