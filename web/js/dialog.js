// A modal confirmation on the native <dialog>: focus moves into it, Escape cancels, the page behind
// is inert, and focus returns to the button that opened it.
import { html, useEffect, useId, useRef } from "./preact.js";

export function ConfirmDialog({ open, title, confirmLabel, busy, error, onConfirm, onCancel, children }) {
  const dialog = useRef(null);
  const titleId = useId();

  useEffect(() => {
    const element = dialog.current;
    if (open && !element.open) element.showModal();
    if (!open && element.open) element.close();
  }, [open]);

  const cancel = (event) => {
    event.preventDefault(); // Escape: we close it, so state and element agree
    if (!busy) onCancel();
  };

  return html`
    <dialog ref=${dialog} class="dialog" aria-labelledby=${titleId} onCancel=${cancel}>
      <h2 id=${titleId}>${title}</h2>
      ${children}
      <p role="alert" class=${error ? "alert" : "alert empty"}>${error}</p>
      <div class="actions">
        <button type="button" autofocus onClick=${onCancel} disabled=${busy}>Cancel</button>
        <button type="button" class="danger" onClick=${onConfirm} disabled=${busy}>${confirmLabel}</button>
      </div>
    </dialog>
  `;
}
