// The vendored libraries (web/vendor/, copied from node_modules by `make web-vendor`), in one place:
// Preact renders, htm turns tagged templates into Preact elements (JSX without a build step).
import { h } from "../vendor/preact-11.2.0/preact.mjs";
import htm from "../vendor/htm-3.1.1/htm.mjs";

export { render } from "../vendor/preact-11.2.0/preact.mjs";
export {
  useCallback,
  useEffect,
  useId,
  useLayoutEffect,
  useMemo,
  useRef,
  useState,
} from "../vendor/preact-11.2.0/hooks.mjs";

export const html = htm.bind(h);
