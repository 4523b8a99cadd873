// Upload: a file picker, a folder picker (a whole CT series) and a drop zone for both. Files go up
// three at a time, each with its own progress bar and one for them all; each row ends as stored,
// duplicate (the API recognised the bytes) or rejected with the API's own message. Rejected files
// come first and are named in the summary; once a batch is done the list folds down to them, so the
// library below stays in sight; a deleted scan's row loses its link.
import { html, useEffect, useRef, useState } from "./preact.js";
import { summaryOf } from "./api.js";
import { bytes, plural } from "./format.js";
import { scanHref } from "./router.js";

const AT_ONCE = 3;
const FINISHED = new Set(["stored", "duplicate", "rejected"]);
let lastRowId = 0;

const byPath = (a, b) => (a.webkitRelativePath || a.name).localeCompare(b.webkitRelativePath || b.name, undefined, { numeric: true });
// Finder and Explorer leave .DS_Store, Thumbs.db and the like in folders: not scans.
const isHidden = (file) => file.name.startsWith(".") || /^(thumbs\.db|desktop\.ini)$/i.test(file.name);

/** The files of a drop, folders walked (the entries must be taken before the first await). */
async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  if (entries.length === 0) return [...dataTransfer.files];
  const files = [];
  for (const entry of entries) await walk(entry, files);
  return files;
}

async function walk(entry, files) {
  if (entry.isFile) {
    files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (batch.length === 0) break;
      for (const child of batch) await walk(child, files);
    }
  }
}

export function Upload({ api, onStored, onStatus, deleted }) {
  const [rows, setRows] = useState([]);
  const [expanded, setExpanded] = useState(false);
  const [dragging, setDragging] = useState(false);
  const queue = useRef([]);
  const running = useRef(0);

  const update = (id, change) => setRows((all) => all.map((row) => (row.id === id ? { ...row, ...change } : row)));

  // One polite announcement when a batch has finished.
  const announced = useRef(true);
  useEffect(() => {
    if (announced.current || rows.length === 0 || !rows.every((row) => FINISHED.has(row.phase))) return;
    announced.current = true;
    const count = (phase) => rows.filter((row) => row.phase === phase).length;
    const rejected = rows.filter((row) => row.phase === "rejected").map((row) => row.name);
    onStatus(
      `Uploads finished: ${count("stored")} stored, ${count("duplicate")} already stored, ${count("rejected")} rejected` +
        (rejected.length ? ` (${rejected.join(", ")}).` : "."),
    );
  }, [rows]);

  function pump() {
    while (running.current < AT_ONCE && queue.current.length > 0) {
      const row = queue.current.shift();
      running.current += 1;
      update(row.id, { phase: "uploading" });
      api
        .upload(row.file, (sent, total) => update(row.id, { sent, phase: sent >= total ? "analyzing" : "uploading" }))
        .then((scan) => {
          update(row.id, { sent: row.size, phase: scan.duplicate ? "duplicate" : "stored", scanId: scan.scanId });
          if (!scan.duplicate) onStored(summaryOf(scan));
        })
        .catch((error) => {
          if (error.code === "aborted") return;
          update(row.id, { sent: row.size, phase: "rejected", message: error.message });
        })
        .finally(() => {
          running.current -= 1;
          pump();
        });
    }
  }

  function add(files) {
    const fresh = files
      .filter((file) => !isHidden(file))
      .sort(byPath)
      .map((file) => ({ id: ++lastRowId, file, name: file.name, size: file.size, sent: 0, phase: "queued", message: "" }));
    if (fresh.length === 0) return;
    // A new batch after the last one finished starts a new list; during one, it joins it.
    const joining = running.current > 0 || queue.current.length > 0;
    announced.current = false;
    setExpanded(false);
    setRows((all) => (joining ? [...all, ...fresh] : fresh));
    queue.current.push(...fresh);
    pump();
  }

  const picked = (event) => {
    add([...event.currentTarget.files]);
    event.currentTarget.value = ""; // the same file can be picked again (it will show as a duplicate)
  };

  const dropped = async (event) => {
    event.preventDefault();
    setDragging(false);
    add(await droppedFiles(event.dataTransfer));
  };

  const total = rows.reduce((sum, row) => sum + row.size, 0);
  const sent = rows.reduce((sum, row) => sum + (FINISHED.has(row.phase) ? row.size : row.sent), 0);
  const done = rows.filter((row) => FINISHED.has(row.phase)).length;
  const idle = done === rows.length;
  const rejected = rows.filter((row) => row.phase === "rejected");
  // Rejected first (they need attention), the rest in the order they were picked.
  const ordered = [...rejected, ...rows.filter((row) => row.phase !== "rejected")];
  const shown = idle && !expanded ? rejected : ordered;
  const summary =
    `${idle ? "All uploads finished" : "Uploading"}: ${done} of ${plural(rows.length, "file")} · ${bytes(sent)} of ${bytes(total)}` +
    (rejected.length ? ` · ${rejected.length} rejected: ${rejected.map((row) => row.name).join(", ")}` : "");

  return html`
    <section class="panel upload" aria-labelledby="upload-title">
      <h2 id="upload-title">Add scans</h2>
      <div
        class=${dragging ? "dropzone dragging" : "dropzone"}
        onDragEnter=${(event) => { event.preventDefault(); setDragging(true); }}
        onDragOver=${(event) => { event.preventDefault(); event.dataTransfer.dropEffect = "copy"; }}
        onDragLeave=${(event) => !event.currentTarget.contains(event.relatedTarget) && setDragging(false)}
        onDrop=${dropped}
      >
        <p>Drop DICOM, PNG or JPEG files, or a folder holding a series, here, or</p>
        <div class="pickers">
          <input id="upload-files" class="file-input" type="file" multiple onChange=${picked} />
          <label for="upload-files" class="button primary">Upload scans</label>
          <input id="upload-folder" class="file-input" type="file" webkitdirectory multiple onChange=${picked} />
          <label for="upload-folder" class="button">Upload a folder</label>
        </div>
      </div>
      ${rows.length > 0 &&
      html`
        <div class="overall">
          <label for="upload-overall">${summary}</label>
          <progress id="upload-overall" max=${total || 1} value=${sent}></progress>
          ${idle &&
          rows.length > rejected.length &&
          html`<button type="button" class="quiet" aria-expanded=${expanded} aria-controls="upload-list"
            onClick=${() => setExpanded(!expanded)}>${expanded ? "Fold the list" : `Show all ${plural(rows.length, "upload")}`}</button>`}
          ${idle && html`<button type="button" class="quiet" onClick=${() => setRows([])}>Clear list</button>`}
        </div>
        <ul class="uploads" id="upload-list" aria-label="Uploads" hidden=${shown.length === 0}>
          ${shown.map((row) => html`<${UploadRow} key=${row.id} row=${row} gone=${deleted?.has(row.scanId)} />`)}
        </ul>
      `}
    </section>
  `;
}

function UploadRow({ row, gone }) {
  const label = `Upload of ${row.name}`;
  let state;
  switch (row.phase) {
    case "queued":
      state = html`<span class="state">Waiting</span>`;
      break;
    case "uploading":
      state = html`<span class="state">${bytes(row.sent)} of ${bytes(row.size)}</span>`;
      break;
    case "analyzing":
      state = html`<span class="state">Analyzing…</span>`;
      break;
    case "stored":
      state = gone
        ? html`<span class="state">Stored, since deleted</span>`
        : html`<span class="state ok">Stored · <a href=${scanHref(row.scanId)}>open</a></span>`;
      break;
    case "duplicate":
      state = gone
        ? html`<span class="state">Duplicate, since deleted</span>`
        : html`<span class="state duplicate">Duplicate: already stored · <a href=${scanHref(row.scanId)}>open</a></span>`;
      break;
    default:
      state = html`<span class="state error" role="alert">Rejected: ${row.message}</span>`;
  }
  return html`
    <li class=${`upload-row ${row.phase}`}>
      <span class="file-name" title=${row.name}>${row.name}</span>
      <progress max=${row.size || 1} value=${FINISHED.has(row.phase) ? row.size || 1 : row.sent} aria-label=${label}></progress>
      ${state}
    </li>
  `;
}
