// Pure presentation rules: names for codes, how scores and deadlines read. No DOM, no network.

export const DECISIONS = [
  { key: "1", value: "uphold_full_refund", label: "Full refund" },
  { key: "2", value: "uphold_partial_refund", label: "Partial refund" },
  { key: "3", value: "replacement", label: "Replacement" },
  { key: "4", value: "reject", label: "Reject" },
  { key: "5", value: "request_more_evidence", label: "Ask for more evidence" },
];

const LABELS = {
  fast_track: "Fast track",
  needs_review: "Needs review",
  suspicious: "Suspicious",
  needs_more_evidence: "Needs more evidence",
  damaged: "Damaged",
  defective: "Defective",
  not_as_described: "Not as described",
  wrong_item: "Wrong item",
  missing_parts: "Missing parts",
  full_refund: "Full refund",
  partial_refund: "Partial refund",
  replacement: "Replacement",
  ok: "Sufficient",
  weak: "Weak",
  insufficient: "Insufficient",
};

/** A person's name for a code: known labels first, else the code with its underscores opened. */
export function label(code) {
  if (code == null || code === "") return "—";
  const known = LABELS[code];
  if (known) return known;
  const words = String(code).replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function decisionLabel(value) {
  return DECISIONS.find((decision) => decision.value === value)?.label ?? label(value);
}

/** Probability as a two-decimal string, as the triage reasons write it ("damage 0.93"). */
export function score(probability) {
  return typeof probability === "number" ? probability.toFixed(2) : "—";
}

/** Which band a probability falls in, given the model card's low/high thresholds (GET /v1/model);
 * 0.3 / 0.8 stand in when the card could not be read. */
export function band(probability, low = 0.3, high = 0.8) {
  if (typeof probability !== "number") return "none";
  if (probability >= high) return "high";
  if (probability <= low) return "low";
  return "mid";
}

/** Priority 0–100 as a band, so the colour says the same as the number. */
export function priorityBand(priority) {
  if (priority >= 70) return "high";
  if (priority >= 40) return "mid";
  return "low";
}

const DAY_MS = 24 * 60 * 60 * 1000;

const plural = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;

/** "due in 3 days", "due in 5 hours", "overdue by 2 days" for an ISO deadline; rounded as the
 * triage policy rounds its deadline reasons, so the page and the reasons never disagree. */
export function deadlinePhrase(deadline, now = new Date()) {
  if (!deadline) return "no deadline";
  const due = new Date(deadline);
  if (Number.isNaN(due.getTime())) return "no deadline";
  const daysLeft = (due.getTime() - now.getTime()) / DAY_MS;
  if (daysLeft < 0) return `overdue by ${plural(Math.ceil(-daysLeft), "day")}`;
  if (daysLeft < 1) return `due in ${plural(Math.max(1, Math.ceil(daysLeft * 24)), "hour")}`;
  return `due in ${plural(Math.floor(daysLeft), "day")}`;
}

/** How urgent a deadline is, for colour: overdue or within 2 days is urgent. */
export function deadlineUrgency(deadline, now = new Date()) {
  if (!deadline) return "none";
  const hours = (new Date(deadline).getTime() - now.getTime()) / (60 * 60 * 1000);
  if (Number.isNaN(hours)) return "none";
  if (hours < 0) return "overdue";
  if (hours < 48) return "soon";
  return "later";
}

export function dateTime(value) {
  if (!value) return "—";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** Amounts arrive as decimal strings ("18.90") so that no cent is lost to floating point. */
export function money(amount, currency) {
  if (amount === null || amount === undefined || amount === "") return "";
  const value = Number(amount);
  if (Number.isNaN(value)) return String(amount);
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: currency || "EUR" })
      .format(value);
  } catch {
    return `${value.toFixed(2)} ${currency ?? ""}`.trim();
  }
}

/** A short, stable handle for a long id (claim ids may be UUIDs). */
export function shortId(id) {
  const text = String(id ?? "");
  return text.length > 12 ? `${text.slice(0, 8)}…` : text;
}
