// The reviewer page: queue, claim detail with evidence beside the listing, one-key decisions.
// Everything the server sends is written with textContent, never as HTML.

import { ApiError, createClient } from "./api.js";
import {
  DECISIONS,
  band,
  dateTime,
  deadlinePhrase,
  deadlineUrgency,
  decisionLabel,
  label,
  money,
  priorityBand,
  score,
  shortId,
} from "./format.js";

const KEY_STORAGE = "triage.reviewerKey";
const HEATMAP_STORAGE = "triage.showHeatmap";
const PAGE_SIZE = 25;
const IMAGE_CACHE_LIMIT = 60;

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  items: [],
  count: 0,
  nextCursor: null,
  selected: -1,
  claim: null,
  // The claim id whose detail failed to load (it is not on screen), until another one loads.
  failedClaimId: null,
  showHeatmap: sessionStorage.getItem(HEATMAP_STORAGE) === "1",
  deciding: false,
  detailAbort: null,
  queueAbort: null,
  // GET /v1/model, asked once per sign-in: a promise of the card, or of null when the call
  // failed (the scores then keep the fixed 0.3 / 0.8 bands and the page says nothing more).
  modelCard: null,
  aboutScoresOpen: false,
};

const api = createClient({
  getKey: () => state.key,
  onUnauthorized: () => {
    forgetKey();
    showError("Your key was refused (401). Paste a valid reviewer key.");
  },
});

// --- small DOM helpers --------------------------------------------------------------------

/** Build an element; children may be strings (text nodes), nodes, or null (skipped). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    // Through the CSSOM: the page's Content-Security-Policy refuses style attributes.
    else if (name === "style") node.style.cssText = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(kind, value, text = label(value)) {
  return el("span", { class: `badge ${kind}-${value}` }, text);
}

// --- messages -----------------------------------------------------------------------------

function toast(message) {
  const item = el("p", { class: "toast" }, message);
  $("toasts").append(item);
  setTimeout(() => item.remove(), 4000);
}

function showError(message) {
  $("alert-text").textContent = message;
  $("alert").hidden = false;
}

function clearError() {
  $("alert").hidden = true;
}

function reportError(error, doing) {
  if (error?.name === "AbortError") return;
  const what = error instanceof ApiError ? error.message : String(error?.message ?? error);
  const status = error instanceof ApiError && error.status ? ` (${error.status})` : "";
  showError(`Could not ${doing}${status}: ${what}`);
}

// --- authenticated images -----------------------------------------------------------------

// Object URLs of fetched photos by path, most recently used last, so j/k back and forth is
// instant. Promises are cached, not URLs, so a prefetch and a display of the same photo share one
// request. Image requests are never aborted: a photo fetched for a claim left quickly is still
// worth keeping for when the reviewer comes back.
const imageCache = new Map();

function imageUrl(path) {
  const cached = imageCache.get(path);
  if (cached) {
    imageCache.delete(path);
    imageCache.set(path, cached);
    return cached;
  }
  const pending = api.imageBlob(path).then((blob) => URL.createObjectURL(blob));
  pending.catch(() => imageCache.delete(path));
  imageCache.set(path, pending);
  while (imageCache.size > IMAGE_CACHE_LIMIT) {
    const [oldest, oldUrl] = imageCache.entries().next().value;
    imageCache.delete(oldest);
    oldUrl.then((url) => URL.revokeObjectURL(url)).catch(() => {});
  }
  return pending;
}

function revokeImages() {
  for (const pending of imageCache.values()) {
    pending.then((url) => URL.revokeObjectURL(url)).catch(() => {});
  }
  imageCache.clear();
}

/** Fill an <img> from an authenticated path; shows a visible failure instead of a broken icon. */
function loadInto(img, path) {
  const frame = img.closest(".frame");
  frame?.classList.add("loading");
  imageUrl(path)
    .then((url) => {
      img.src = url;
    })
    .catch((error) => {
      frame?.classList.add("failed");
      frame?.append(el("p", { class: "frame-error" }, `Image unavailable: ${error.message}`));
    })
    .finally(() => frame?.classList.remove("loading"));
}

// --- key ----------------------------------------------------------------------------------

function forgetKey() {
  state.key = null;
  state.modelCard = null;
  sessionStorage.removeItem(KEY_STORAGE);
  revokeImages();
  showSignIn();
}

function showSignIn() {
  $("workspace").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("api-key").value = "";
  $("api-key").focus();
}

function showWorkspace() {
  $("sign-in").hidden = true;
  $("workspace").hidden = false;
  $("sign-out").hidden = false;
}

function loadModelCard() {
  state.modelCard = api.model().catch(() => null);
}

async function openWorkspace() {
  showWorkspace();
  await loadQueue();
  // Asked only once the queue has accepted the key, so that a refused key is reported once.
  if (state.key) loadModelCard();
}

// --- queue --------------------------------------------------------------------------------

function filters() {
  return {
    lane: $("filter-lane").value,
    status: $("filter-status").value,
    reason: $("filter-reason").value,
  };
}

async function loadQueue({ append = false } = {}) {
  state.queueAbort?.abort();
  const abort = new AbortController();
  state.queueAbort = abort;
  const list = $("queue-list");
  list.setAttribute("aria-busy", "true");
  try {
    const page = await api.queue(
      { ...filters(), limit: PAGE_SIZE, cursor: append ? state.nextCursor : undefined },
      abort.signal,
    );
    const selectedId = state.items[state.selected]?.claim_id;
    state.items = append ? state.items.concat(page.data) : page.data;
    state.count = page.count;
    state.nextCursor = page.next_cursor ?? null;
    // Keep the reviewer on the claim they were looking at when the list reloads under them.
    const kept = state.items.findIndex((item) => item.claim_id === selectedId);
    state.selected = append ? state.selected : kept;
    renderQueue();
    clearError();
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      // A valid key of another role (a buyer's, say): the queue is for reviewers only.
      forgetKey();
      showError(`This key may not open the review queue (403): ${error.message}`);
      return;
    }
    reportError(error, "load the queue");
  } finally {
    list.removeAttribute("aria-busy");
  }
}

/** Reload the queue, and the selected claim too where its detail failed to load. */
async function refresh() {
  await loadQueue();
  if (!state.failedClaimId) return;
  if (state.selected >= 0) {
    await select(state.selected);
  } else {
    // The claim that failed to load has left the queue (decided elsewhere): nothing is open.
    state.failedClaimId = null;
    $("placeholder-title").textContent = "No claim selected";
    $("placeholder-hint").textContent = "Choose a claim in the queue, or press j to start.";
  }
}

function queueItem(claim, index) {
  const triage = claim.triage ?? {};
  const priority = Math.round(triage.priority ?? 0);
  const reasons = triage.reasons ?? [];
  const urgency = deadlineUrgency(triage.deadline);
  return el(
    "li",
    {},
    el(
      "button",
      {
        type: "button",
        class: "queue-item",
        "aria-current": index === state.selected ? "true" : null,
        dataset: { claimId: claim.claim_id, index: String(index) },
        onclick: () => select(index),
      },
      el(
        "span",
        {
          class: `priority priority-${priorityBand(priority)}`,
          "aria-label": `priority ${priority}`,
        },
        String(priority),
      ),
      el(
        "span",
        { class: "queue-main" },
        el(
          "span",
          { class: "queue-line" },
          el("span", { class: "queue-reason" }, label(claim.reason)),
          badge("lane", triage.lane),
        ),
        el(
          "span",
          { class: "queue-meta" },
          el("span", { class: "mono" }, shortId(claim.claim_id)),
          " · ",
          label(claim.status),
          " · ",
          el("span", { class: `deadline deadline-${urgency}` }, deadlinePhrase(triage.deadline)),
        ),
        reasons.length
          ? el("span", { class: "queue-reasons" }, reasons.slice(0, 2).join("; "))
          : null,
      ),
    ),
  );
}

function renderQueue() {
  const list = $("queue-list");
  list.replaceChildren(...state.items.map(queueItem));
  $("queue-count").textContent = `${state.count}`;
  $("queue-empty").hidden = state.items.length > 0;
  $("load-more").hidden = !state.nextCursor;
}

function markSelected() {
  for (const button of $("queue-list").querySelectorAll(".queue-item")) {
    const isSelected = Number(button.dataset.index) === state.selected;
    if (isSelected) {
      button.setAttribute("aria-current", "true");
      button.scrollIntoView({ block: "nearest" });
    } else {
      button.removeAttribute("aria-current");
    }
  }
}

async function select(index) {
  if (index < 0 || index >= state.items.length) return;
  state.selected = index;
  markSelected();
  const item = state.items[index];
  await loadDetail(item.claim_id, item.listing_id);
}

async function move(step) {
  if (!state.items.length) return;
  const target = state.selected < 0 ? 0 : state.selected + step;
  if (target >= state.items.length && state.nextCursor) await loadQueue({ append: true });
  const bounded = Math.max(0, Math.min(state.items.length - 1, target));
  if (bounded !== state.selected) await select(bounded);
}

// --- claim detail -------------------------------------------------------------------------

async function loadDetail(claimId, listingId) {
  state.detailAbort?.abort();
  const abort = new AbortController();
  state.detailAbort = abort;
  // Until the new claim has arrived no decision may go out: the one still on screen is no
  // longer the selected claim, and a key pressed now must not decide it by mistake.
  state.claim = null;
  $("detail").setAttribute("aria-busy", "true");
  try {
    // The listing is fetched alongside, not after: the queue row already names it. A listing
    // that fails to load must not hide the evidence, so its failure is shown in its own panel.
    const [claim, audit, listing, modelCard] = await Promise.all([
      api.claim(claimId, abort.signal),
      api.audit(claimId, abort.signal),
      api.listing(listingId, abort.signal).then(
        (value) => ({ value }),
        (error) => {
          if (error?.name === "AbortError") throw error;
          return { error };
        },
      ),
      state.modelCard,
    ]);
    state.claim = claim;
    state.failedClaimId = null;
    renderDetail(claim, audit, listing, modelCard);
    prefetchNeighbour();
  } catch (error) {
    if (error?.name !== "AbortError" && state.detailAbort === abort) showDetailFailure(claimId);
    reportError(error, `open claim ${shortId(claimId)}`);
  } finally {
    if (state.detailAbort === abort) $("detail").removeAttribute("aria-busy");
  }
}

/** The selected claim could not be loaded: take the claim shown before it off the screen, so
 * that the detail never shows a claim other than the one selected in the queue. */
function showDetailFailure(claimId) {
  state.failedClaimId = claimId;
  $("detail-body").hidden = true;
  $("detail-body").replaceChildren();
  $("placeholder-title").textContent = `Claim ${shortId(claimId)} could not be opened`;
  $("placeholder-hint").textContent = "Press r to try again, or j / k to move on.";
  $("detail-placeholder").hidden = false;
  $("detail").setAttribute("aria-labelledby", "placeholder-title");
}

/** Warm the image cache with the next claim's photos (queue rows carry their photo urls), so
 * that `j` shows them at once. Failures are ignored here: the claim's own load reports them. */
function prefetchNeighbour() {
  const next = state.items[state.selected + 1];
  for (const photo of next?.photos ?? []) imageUrl(photo.url).catch(() => {});
}

/** @param {{ low: number, high: number } | undefined} bands the card's thresholds for this
 * score; undefined when the card could not be read */
function scoreRow(name, probability, bands, detail) {
  const level = band(probability, bands?.low, bands?.high);
  return el(
    "div",
    { class: "score" },
    el("span", { class: "score-name" }, name),
    el(
      "span",
      { class: "meter", "aria-hidden": "true" },
      el("span", {
        class: `meter-fill band-${level}`,
        style: `width: ${Math.round((probability ?? 0) * 100)}%`,
      }),
    ),
    el("span", { class: `score-value band-${level}` }, score(probability)),
    detail ? el("span", { class: "score-detail muted" }, detail) : null,
  );
}

function issueList(issues) {
  if (!issues?.length) return el("p", { class: "issues-none" }, "No quality issues");
  return el(
    "ul",
    { class: "issues" },
    issues.map((issue) =>
      el(
        "li",
        { class: `issue issue-${issue.severity}` },
        el("span", { class: "issue-code" }, `${label(issue.code)} · ${issue.severity}`),
        el("span", { class: "issue-message" }, issue.message),
      ),
    ),
  );
}

function photoCard(photo, position, claim, thresholds) {
  const image = el("img", {
    class: "photo",
    alt: `Evidence photo ${position} of claim ${shortId(claim.claim_id)}`,
  });
  const heatmap = el("img", {
    class: "heatmap",
    alt: "",
    "aria-hidden": "true",
    hidden: !state.showHeatmap,
  });
  const frame = el(
    "button",
    {
      type: "button",
      class: "frame",
      title: "Open full size",
      onclick: () => openPhoto(heatmap.hidden || !heatmap.src ? image : heatmap),
    },
    image,
    heatmap,
  );
  loadInto(image, photo.url);
  heatmap.dataset.src = photo.heatmap_url;
  if (state.showHeatmap) loadHeatmap(heatmap);
  const mismatchDetail =
    typeof photo.match_similarity === "number"
      ? `best listing match ${photo.match_similarity.toFixed(2)}`
      : photo.mismatch == null
        ? "listing has no images"
        : null;
  return el(
    "figure",
    { class: "photo-card" },
    frame,
    el(
      "figcaption",
      {},
      el("span", { class: "photo-title" }, `Photo ${position}`),
      scoreRow(
        "Damage",
        photo.damage,
        thresholds && { low: thresholds.damage_low, high: thresholds.damage_high },
      ),
      scoreRow(
        "Mismatch",
        photo.mismatch,
        thresholds && { low: thresholds.mismatch_low, high: thresholds.mismatch_high },
        mismatchDetail,
      ),
      issueList(photo.issues),
    ),
  );
}

/** What the scores mean and cannot do, from the model card; closed unless the reviewer opened
 * it (the choice is kept from claim to claim). Nothing when the card could not be read. */
function aboutScores(modelCard) {
  if (!modelCard) return null;
  const { thresholds, limitations = [] } = modelCard;
  const reading = (name, high, low) =>
    `${name} is likely from ${score(high)} and unlikely up to ${score(low)}`;
  return el(
    "details",
    {
      class: "about-scores",
      open: state.aboutScoresOpen,
      ontoggle: (event) => {
        state.aboutScoresOpen = event.currentTarget.open;
      },
    },
    el("summary", {}, "About the scores"),
    el(
      "p",
      {},
      `Model ${modelCard.model_version}. ` +
        `${reading("Damage", thresholds.damage_high, thresholds.damage_low)}; ` +
        `${reading("mismatch", thresholds.mismatch_high, thresholds.mismatch_low)}. ` +
        "Scores in between are uncertain: look at the photos.",
    ),
    limitations.length
      ? [
          el("p", { id: "limitations-title" }, "What the scores cannot do:"),
          el(
            "ul",
            { class: "limitations", "aria-labelledby": "limitations-title" },
            limitations.map((limitation) => el("li", {}, limitation)),
          ),
        ]
      : null,
  );
}

function loadHeatmap(img) {
  img.dataset.loaded = "1";
  loadInto(img, img.dataset.src);
}

function applyHeatmapToggle() {
  for (const img of document.querySelectorAll("#detail-body .heatmap")) {
    img.hidden = !state.showHeatmap;
    if (state.showHeatmap && !img.dataset.loaded) {
      loadHeatmap(img);
    }
  }
  const toggle = $("heatmap-toggle");
  if (toggle) toggle.checked = state.showHeatmap;
}

function listingImages(listing) {
  const images = listing?.images ?? [];
  if (!images.length) return el("p", { class: "muted" }, "This listing has no images.");
  return el(
    "div",
    { class: "listing-images" },
    images.map((image, index) => {
      const img = el("img", { class: "photo", alt: `Listing image ${index + 1}` });
      const frame = el(
        "button",
        { type: "button", class: "frame", title: "Open full size", onclick: () => openPhoto(img) },
        img,
      );
      loadInto(img, image.url); // after framing: the frame shows loading and failure
      return frame;
    }),
  );
}

function auditList(audit) {
  const entries = audit?.data ?? [];
  if (!entries.length) return el("p", { class: "muted" }, "No history yet.");
  // Newest first: the last decision is what a reviewer looks for.
  return el(
    "ol",
    { class: "audit", reversed: true },
    [...entries].reverse().map((entry) =>
      el(
        "li",
        { dataset: { action: entry.action } },
        el("time", { datetime: entry.created_at }, dateTime(entry.created_at)),
        el("span", { class: "audit-action" }, label(entry.action)),
        el("span", { class: "muted" }, `by ${entry.actor_role}`),
        auditSummary(entry.detail),
      ),
    ),
  );
}

/** The scalar facts of an audit entry's detail, decision first, as "name: value" pairs. */
function auditSummary(detail) {
  if (!detail || typeof detail !== "object") return null;
  const parts = [];
  if (detail.decision) parts.push(decisionLabel(detail.decision));
  for (const [name, value] of Object.entries(detail)) {
    // Ids (review, listing) mean nothing to a reviewer reading the history; objects are labels.
    const skip = name === "decision" || name.endsWith("_id") || typeof value === "object";
    if (skip || value === null || value === "") continue;
    parts.push(`${label(name).toLowerCase()}: ${value}`);
  }
  return parts.length ? el("span", { class: "audit-detail" }, parts.join(" · ")) : null;
}

function decisionBar(claim) {
  if (claim.status === "resolved") {
    return el(
      "section",
      { class: "decide decided", "aria-labelledby": "decide-title" },
      el("h3", { id: "decide-title" }, "Decision"),
      el(
        "p",
        { class: "decided-text" },
        `${decisionLabel(claim.decision)} · decided ${dateTime(claim.decided_at)}`,
      ),
    );
  }
  return el(
    "section",
    { class: "decide", "aria-labelledby": "decide-title" },
    el("h3", { id: "decide-title", class: "visually-hidden" }, "Decision"),
    el(
      "div",
      { class: "decide-fields" },
      el(
        "div",
        { class: "field" },
        el("label", { for: "decision-amount" }, "Amount (partial refund)"),
        el("input", {
          id: "decision-amount",
          type: "number",
          min: "0",
          max: claim.amount ?? null,
          step: "0.01",
          inputmode: "decimal",
          placeholder: claim.amount != null ? `up to ${claim.amount}` : null,
          onkeydown: (event) => {
            if (event.key === "Enter") decide("uphold_partial_refund");
          },
        }),
      ),
      el(
        "div",
        { class: "field grow" },
        el("label", { for: "decision-notes" }, "Notes (optional)"),
        el("input", { id: "decision-notes", type: "text", maxlength: "2000" }),
      ),
    ),
    el(
      "div",
      { class: "decide-buttons", role: "group", "aria-label": "Decisions" },
      DECISIONS.map((decision) =>
        el(
          "button",
          {
            type: "button",
            class: `decision decision-${decision.value}`,
            dataset: { decision: decision.value },
            "aria-keyshortcuts": decision.key,
            onclick: () => decide(decision.value),
          },
          el("kbd", {}, decision.key),
          ` ${decision.label}`,
        ),
      ),
    ),
  );
}

function fact(name, value) {
  // A <div> per pair keeps each label above its value in the grid (allowed inside <dl>).
  return el("div", { class: "fact" }, el("dt", {}, name), el("dd", {}, value));
}

function listingPanel(claim, listing) {
  return el(
    "section",
    { class: "listing", "aria-labelledby": "listing-title" },
    el("h3", { id: "listing-title" }, "Listing"),
    el(
      "p",
      { class: "listing-name" },
      listing.value?.title ?? "",
      el("span", { class: "mono muted" }, ` ${claim.listing_id}`),
    ),
    listing.error
      ? el("p", { class: "frame-error inline" }, `Listing unavailable: ${listing.error.message}`)
      : listingImages(listing.value),
  );
}

function renderDetail(claim, audit, listing, modelCard) {
  const triage = claim.triage ?? {};
  const photos = claim.photos ?? [];
  const priority = Math.round(triage.priority ?? 0);
  const body = $("detail-body");
  body.replaceChildren(
    el(
      "header",
      { class: "detail-head" },
      el(
        "div",
        { class: "detail-title-row" },
        el(
          "span",
          { class: `priority priority-${priorityBand(priority)} large` },
          String(priority),
        ),
        el(
          "div",
          {},
          el(
            "h2",
            { id: "detail-title" },
            `${label(claim.reason)} · ${label(claim.resolution)}`,
            claim.amount != null ? ` · ${money(claim.amount, claim.currency)}` : "",
          ),
          el(
            "p",
            { class: "detail-sub" },
            el("span", { class: "mono" }, claim.claim_id),
            " · ",
            badge("status", claim.status),
            " ",
            badge("lane", triage.lane),
          ),
        ),
      ),
      el(
        "dl",
        { class: "facts" },
        fact("Deadline", [
          el(
            "span",
            { class: `deadline deadline-${deadlineUrgency(triage.deadline)}` },
            deadlinePhrase(triage.deadline),
          ),
          el("span", { class: "fact-note" }, dateTime(triage.deadline)),
        ]),
        fact("Opened", dateTime(claim.opened_at)),
        fact("Order", claim.order_ref ?? "—"),
        fact("Support", score(triage.support)),
        fact("Evidence", label(triage.sufficiency)),
      ),
      triage.reasons?.length
        ? el(
            "ul",
            { class: "reasons", "aria-label": "Why this priority" },
            triage.reasons.map((reason) => el("li", {}, reason)),
          )
        : null,
      el(
        "blockquote",
        { class: "description" },
        claim.description ? claim.description : el("span", { class: "muted" }, "No description."),
      ),
    ),
    el(
      "div",
      { class: "compare" },
      el(
        "section",
        { class: "evidence", "aria-labelledby": "evidence-title" },
        el(
          "div",
          { class: "section-head" },
          el("h3", { id: "evidence-title" }, `Evidence (${photos.length})`),
          el(
            "label",
            { class: "toggle", title: "Tints the photo red where the model sees damage" },
            el("input", {
              type: "checkbox",
              id: "heatmap-toggle",
              checked: state.showHeatmap,
              onchange: (event) => setHeatmap(event.target.checked),
            }),
            " Damage heatmap ",
            el("kbd", {}, "h"),
          ),
        ),
        photos.length
          ? el(
              "div",
              { class: "photos" },
              photos.map((photo, index) =>
                photoCard(photo, index + 1, claim, modelCard?.thresholds),
              ),
            )
          : el("p", { class: "muted" }, "No photos uploaded yet."),
        aboutScores(modelCard),
      ),
      listingPanel(claim, listing),
    ),
    decisionBar(claim),
    el(
      "section",
      { class: "history", "aria-labelledby": "history-title" },
      el("h3", { id: "history-title" }, "History"),
      auditList(audit),
    ),
  );
  $("detail-placeholder").hidden = true;
  body.hidden = false;
  // Named by the claim's heading now, no longer by the placeholder's (hidden, yet still read).
  $("detail").setAttribute("aria-labelledby", "detail-title");
}

function setHeatmap(show) {
  state.showHeatmap = show;
  sessionStorage.setItem(HEATMAP_STORAGE, show ? "1" : "0");
  applyHeatmapToggle();
}

function openPhoto(img) {
  if (!img.src) return;
  $("photo-dialog-image").src = img.src;
  $("photo-dialog-image").alt = img.alt || "Damage heatmap";
  $("photo-dialog").showModal();
}

// --- decisions ----------------------------------------------------------------------------

async function decide(decision) {
  const claim = state.claim;
  if (!claim) {
    toast(
      state.selected < 0
        ? "Select a claim first (j / k)."
        : state.failedClaimId
          ? "This claim could not be opened: press r to try again."
          : "The claim is still loading.",
    );
    return;
  }
  if (state.deciding) return;
  if (claim.status === "resolved") {
    toast(`Claim ${shortId(claim.claim_id)} is already decided.`);
    return;
  }
  const review = { decision };
  const amount = $("decision-amount")?.value.trim();
  const notes = $("decision-notes")?.value.trim();
  if (decision === "uphold_partial_refund" && !amount) {
    // The API refuses a partial refund without an amount; ask here instead of failing there.
    $("decision-amount").focus();
    toast("Type the amount to refund, then press Enter.");
    return;
  }
  // Sent as the typed string: the API reads amounts as decimals, never as binary floats.
  if (decision === "uphold_partial_refund" && amount) review.amount = amount;
  if (notes) review.notes = notes;
  state.deciding = true;
  const buttons = document.querySelectorAll(".decision");
  for (const button of buttons) button.disabled = true;
  document
    .querySelector(`.decision[data-decision="${decision}"]`)
    ?.setAttribute("aria-busy", "true");
  try {
    await api.review(claim.claim_id, review);
    toast(`${decisionLabel(decision)} recorded for claim ${shortId(claim.claim_id)}.`);
    clearError();
    await advanceAfterDecision(claim);
  } catch (error) {
    if (error instanceof ApiError && error.status === 409) {
      // Decided meanwhile (another reviewer): it has left the queue, so go on as after a
      // decision of one's own, and then say why this one was not recorded.
      await advanceAfterDecision(claim);
    }
    reportError(error, `record "${decisionLabel(decision)}"`);
  } finally {
    state.deciding = false;
    for (const button of document.querySelectorAll(".decision")) {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }
}

/** After a decision the queue changes under the reviewer: go on with the claim that now sits
 * where the decided one was (as a mail client does after archiving), or stay on it if the queue
 * has nothing else. */
async function advanceAfterDecision(decided) {
  const position = Math.max(state.selected, 0);
  await loadQueue();
  // The reload starts at the first page again: load on until it reaches the reviewer's place,
  // so a decision on a later page goes on there, not at the end of the first page.
  const reached = () =>
    state.items.slice(position).some((item) => item.claim_id !== decided.claim_id);
  while (state.nextCursor && !reached()) {
    const loaded = state.items.length;
    await loadQueue({ append: true });
    if (state.items.length === loaded) break; // that page failed: loadQueue reported it
  }
  const others = state.items
    .map((item, index) => ({ item, index }))
    .filter(({ item }) => item.claim_id !== decided.claim_id);
  const next = others.find(({ index }) => index >= position) ?? others.at(-1);
  if (next) {
    await select(next.index);
  } else {
    await loadDetail(decided.claim_id, decided.listing_id);
  }
}

// --- keyboard -----------------------------------------------------------------------------

function isTyping(target) {
  return (
    target instanceof HTMLElement &&
    (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))
  );
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if ($("workspace").hidden || isTyping(event.target)) return;
  if (document.querySelector("dialog[open]")) return;
  const decision = DECISIONS.find((item) => item.key === event.key);
  if (decision) {
    event.preventDefault();
    decide(decision.value);
    return;
  }
  const actions = {
    j: () => move(1),
    k: () => move(-1),
    h: () => setHeatmap(!state.showHeatmap),
    r: () => refresh(),
    "?": () => $("keys-dialog").showModal(),
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

// --- start --------------------------------------------------------------------------------

function start() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    state.key = key;
    sessionStorage.setItem(KEY_STORAGE, key);
    openWorkspace();
  });
  $("sign-out").addEventListener("click", forgetKey);
  $("alert-close").addEventListener("click", clearError);
  $("keys-button").addEventListener("click", () => $("keys-dialog").showModal());
  $("refresh").addEventListener("click", () => refresh());
  $("load-more").addEventListener("click", () => loadQueue({ append: true }));
  $("filters").addEventListener("change", () => {
    state.selected = -1;
    loadQueue();
  });
  document.addEventListener("keydown", onKey);
  if (state.key) {
    openWorkspace();
  } else {
    showSignIn();
  }
}

start();
