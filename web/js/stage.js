// The image on screen: a canvas at the image's own size, painted from its pixel values through the
// window, inside a plane that zoom and pan move and scale; the regions and the measurement are an
// SVG in the same plane, in image pixels, so they stay on the anatomy at any zoom. The pointer does
// what the tool says: window (drag: width across, center up and down), pan, or measure (a line);
// two fingers pinch-zoom; the wheel steps through a stack, ctrl+wheel zooms; on touch a vertical
// swipe steps.
import { html, useEffect, useLayoutEffect, useRef, useState } from "./preact.js";
import { greyTable, paintColour, paintGrey } from "./pixels.js";

const MIN_ZOOM = 0.25;
const MAX_ZOOM = 32;
const WHEEL_STEP = 50; // px of a trackpad's small deltas that make one step; a mouse notch is one step
const SWIPE_STEP = 40; // px of a vertical swipe per step
const LABEL_PX = 12; // overlay text, in screen pixels at any zoom

export const clampZoom = (zoom) => Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, zoom));

/** The measured length of a line in image pixels: mm from the spacing, or px. */
export function lineLength({ a, b }, spacing) {
  const dx = (b[0] - a[0]) * spacing.column;
  const dy = (b[1] - a[1]) * spacing.row;
  return Math.hypot(dx, dy);
}

export function lengthText(line, spacing) {
  const length = lineLength(line, spacing);
  if (spacing.unit === "px") return `${length.toFixed(1)} px${spacing.note ? ` (${spacing.note})` : ""}`;
  return `${length.toFixed(1)} mm${spacing.note === "at the detector" ? " at the detector" : ""}`;
}

export function Stage({
  picture,
  window,
  onWindow,
  tool,
  view,
  onView,
  measurement,
  onMeasure,
  regions,
  showRegions,
  active,
  onActive,
  onStep,
  label,
  measureText,
}) {
  const viewport = useRef(null);
  const canvas = useRef(null);
  const [size, setSize] = useState({ width: 0, height: 0 });
  const pixels = useRef(null); // {picture, imageData}
  const gesture = useRef(null);
  const pointers = useRef(new Map());
  const wheel = useRef(0);
  const latest = useRef({});
  latest.current = { window, view, onWindow, onView, onMeasure, onStep, tool, picture };

  useLayoutEffect(() => {
    const element = viewport.current;
    const observer = new ResizeObserver(([entry]) => {
      const { width, height } = entry.contentRect;
      setSize({ width, height });
    });
    observer.observe(element);
    return () => observer.disconnect();
  }, []);

  // Paint as soon as the picture or the window changes, before the frame is shown: a drag's
  // pointer events come once an animation frame, and each gets its picture in that frame.
  useLayoutEffect(() => {
    const element = canvas.current;
    if (!picture || !window || !element) return;
    const context = element.getContext("2d");
    if (pixels.current?.picture !== picture) {
      element.width = picture.width;
      element.height = picture.height;
      pixels.current = { picture, imageData: context.createImageData(picture.width, picture.height) };
    }
    const { imageData } = pixels.current;
    if (picture.colour) paintColour(picture.values, imageData, picture.channels);
    else paintGrey(picture.values, greyTable(picture.values, picture.image, window), imageData);
    context.putImageData(imageData, 0, 0);
    performance.mark("viewer-paint"); // the browser tests time windowing by these
  }, [picture, window]);

  const width = picture?.width ?? 1;
  const height = picture?.height ?? 1;
  const fit = size.width && size.height ? Math.min(size.width / width, size.height / height) : 1;
  const scale = fit * view.zoom;
  const x = view.x ?? width / 2;
  const y = view.y ?? height / 2;
  const tx = size.width / 2 - x * scale;
  const ty = size.height / 2 - y * scale;
  const geometry = useRef({});
  geometry.current = { scale, tx, ty, fit, width, height };

  const toImage = (event) => {
    const rect = viewport.current.getBoundingClientRect();
    const { scale: s, tx: ox, ty: oy } = geometry.current;
    return [(event.clientX - rect.left - ox) / s, (event.clientY - rect.top - oy) / s];
  };

  const zoomAt = (factor, clientX, clientY) => {
    const { view: current, onView: setView } = latest.current;
    const rect = viewport.current.getBoundingClientRect();
    const { scale: s, tx: ox, ty: oy, fit: f } = geometry.current;
    const zoom = clampZoom(current.zoom * factor);
    const point = [(clientX - rect.left - ox) / s, (clientY - rect.top - oy) / s];
    const next = f * zoom;
    // Keep the image point under the cursor where it is.
    setView({
      zoom,
      x: point[0] - (clientX - rect.left - rect.width / 2) / next,
      y: point[1] - (clientY - rect.top - rect.height / 2) / next,
    });
  };

  // Wheel and pinch need non-passive listeners (preventDefault keeps the page from scrolling).
  useEffect(() => {
    const element = viewport.current;
    const onWheel = (event) => {
      event.preventDefault();
      if (event.ctrlKey || event.metaKey) {
        const delta = event.deltaMode === WheelEvent.DOM_DELTA_PIXEL ? event.deltaY : event.deltaY * 40;
        zoomAt(Math.exp(-delta * 0.002), event.clientX, event.clientY);
        return;
      }
      const step = latest.current.onStep;
      if (!step) return;
      // One step per wheel event at most: a mouse notch (a line, or ~100 px) is one slice; a
      // trackpad's stream of small deltas adds up to one.
      const pixelsMoved = event.deltaMode === WheelEvent.DOM_DELTA_PIXEL ? event.deltaY : event.deltaY * WHEEL_STEP;
      if (Math.abs(pixelsMoved) >= WHEEL_STEP) {
        wheel.current = 0;
        step(Math.sign(pixelsMoved));
        return;
      }
      wheel.current += pixelsMoved;
      if (Math.abs(wheel.current) >= WHEEL_STEP) {
        step(Math.sign(wheel.current));
        wheel.current = 0;
      }
    };
    element.addEventListener("wheel", onWheel, { passive: false });
    return () => element.removeEventListener("wheel", onWheel);
  }, []);

  const down = (event) => {
    if (!picture || event.button > 0) return;
    try {
      viewport.current.setPointerCapture(event.pointerId); // the drag goes on outside the image
    } catch {
      // a pointer the browser no longer tracks: the drag works within the image still
    }
    pointers.current.set(event.pointerId, [event.clientX, event.clientY]);
    if (pointers.current.size === 2) {
      const [p, q] = [...pointers.current.values()];
      gesture.current = { kind: "pinch", distance: Math.hypot(p[0] - q[0], p[1] - q[1]) };
      return;
    }
    const { tool: current, window: win, view: v } = latest.current;
    const start = { x: event.clientX, y: event.clientY };
    if (current === "measure") {
      const point = toImage(event);
      gesture.current = { kind: "measure", a: point };
      latest.current.onMeasure({ a: point, b: point });
    } else if (current === "pan") {
      gesture.current = { kind: "pan", start, view: v };
    } else if (event.pointerType === "touch") {
      gesture.current = { kind: "swipe", start, stepped: 0 };
    } else {
      gesture.current = { kind: "window", start, window: win };
    }
  };

  const move = (event) => {
    const g = gesture.current;
    if (!g || !pointers.current.has(event.pointerId)) return;
    pointers.current.set(event.pointerId, [event.clientX, event.clientY]);
    if (g.kind === "pinch" && pointers.current.size === 2) {
      const [p, q] = [...pointers.current.values()];
      const distance = Math.hypot(p[0] - q[0], p[1] - q[1]);
      zoomAt(distance / g.distance, (p[0] + q[0]) / 2, (p[1] + q[1]) / 2);
      g.distance = distance;
      return;
    }
    const dx = event.clientX - (g.start?.x ?? 0);
    const dy = event.clientY - (g.start?.y ?? 0);
    if (g.kind === "measure") {
      latest.current.onMeasure({ a: g.a, b: toImage(event) });
    } else if (g.kind === "pan") {
      const s = geometry.current.scale;
      latest.current.onView({ ...g.view, x: (g.view.x ?? width / 2) - dx / s, y: (g.view.y ?? height / 2) - dy / s });
    } else if (g.kind === "swipe") {
      const steps = Math.trunc(dy / SWIPE_STEP);
      if (steps !== g.stepped && latest.current.onStep) {
        latest.current.onStep(-(steps - g.stepped)); // finger up: the next slice, as a page scrolls
        g.stepped = steps;
      }
    } else if (g.kind === "window") {
      // A drag across the image changes the width by about its own size; up and down the center.
      const sensitivity = Math.max(g.window.width, 1) / 250;
      latest.current.onWindow({
        ...g.window,
        width: Math.max(1, g.window.width + dx * sensitivity),
        center: g.window.center - dy * sensitivity,
      });
    }
  };

  const up = (event) => {
    pointers.current.delete(event.pointerId);
    if (pointers.current.size === 0) gesture.current = null;
  };

  const stroke = LABEL_PX / scale;
  return html`
    <div
      class=${`viewport tool-${tool}`}
      ref=${viewport}
      onPointerDown=${down}
      onPointerMove=${move}
      onPointerUp=${up}
      onPointerCancel=${up}
    >
      <div class="plane" style=${{ width: `${width}px`, height: `${height}px`, transform: `translate(${tx}px, ${ty}px) scale(${scale})` }}>
        <canvas ref=${canvas} role="img" aria-label=${label}></canvas>
        <svg class="overlay" viewBox=${`0 0 ${width} ${height}`} aria-hidden="true" font-size=${stroke}>
          ${showRegions &&
          (regions ?? []).map(({ id, bbox }) => html`<g key=${id} class=${id === active ? "box active" : "box"}
            onMouseEnter=${() => onActive?.(id)} onMouseLeave=${() => onActive?.(null)}>
            <rect x=${bbox.x} y=${bbox.y} width=${bbox.width} height=${bbox.height} vector-effect="non-scaling-stroke" />
            <text x=${bbox.x} y=${bbox.y > stroke * 1.2 ? bbox.y - stroke * 0.25 : bbox.y + bbox.height + stroke}>${id}</text>
          </g>`)}
          ${measurement &&
          html`<g class="measure">
            <line x1=${measurement.a[0]} y1=${measurement.a[1]} x2=${measurement.b[0]} y2=${measurement.b[1]}
              vector-effect="non-scaling-stroke" />
            <circle cx=${measurement.a[0]} cy=${measurement.a[1]} r=${stroke * 0.3} />
            <circle cx=${measurement.b[0]} cy=${measurement.b[1]} r=${stroke * 0.3} />
            ${measureText && html`<text x=${measurement.b[0] + stroke * 0.5} y=${measurement.b[1] - stroke * 0.5}>${measureText}</text>`}
          </g>`}
        </svg>
      </div>
    </div>
  `;
}
