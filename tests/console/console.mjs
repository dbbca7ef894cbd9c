// Drives Tocsin's web console in the system's headless Chromium (puppeteer-core, no browser
// download) through the on-call scenario of issue 16, checks every page with axe-core (no
// serious or critical violation), and saves a screenshot of every page. Started by
// tests/it/console.rs, which prepared Tocsin and the stand-ins; it reads:
//   TOCSIN_URL, TOCSIN_CLIENT, TOCSIN_SECRET   the console and a client with every scope
//   FIXED_DESTINATION                          the webhook URL that works
//   SCREENSHOTS                                where the screenshots go
// Prints one `ok - …` line per step; exits non-zero at the first failure.

import puppeteer from "puppeteer-core";
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const AXE = require.resolve("axe-core/axe.min.js");
const base = process.env.TOCSIN_URL;
const screenshots = process.env.SCREENSHOTS;
mkdirSync(screenshots, { recursive: true });

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const page = await browser.newPage();
// axe is injected as a script; the console's CSP (rightly) allows only its own.
await page.setBypassCSP(true);
await page.setViewport({ width: 1280, height: 900 });

function ok(step) {
  console.log(`ok - ${step}`);
}

function fail(message) {
  throw new Error(message);
}

async function text(selector) {
  return page.$eval(selector, (e) => e.textContent.trim());
}

/** axe-core on the current page: fails on any serious or critical violation. */
async function accessible(name) {
  await page.addScriptTag({ path: AXE });
  const results = await page.evaluate(async () => await window.axe.run(document));
  const bad = results.violations.filter((v) => ["serious", "critical"].includes(v.impact));
  if (bad.length > 0) {
    const detail = bad
      .map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)
      .join("\n");
    fail(`${name}: axe found serious or critical violations:\n${detail}`);
  }
  ok(`${name}: axe reports no serious or critical violation (${results.violations.length} minor)`);
}

async function shot(name) {
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
}

/** Checks and photographs the page now shown. */
async function look(name) {
  await accessible(name);
  await shot(name);
}

async function go(path) {
  const response = await page.goto(base + path, { waitUntil: "load" });
  return response.status();
}

/** Submits by clicking `selector` and waits for the page that answers. */
async function submit(selector) {
  await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click(selector)]);
}

/** Reloads `path` until `done()` (evaluated in the page) holds. */
async function until(path, what, done, seconds = 30) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    await go(path);
    if (await page.evaluate(done)) return;
    if (Date.now() > deadline) fail(`timed out waiting for ${what} on ${path}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

try {
  // Sign in.
  await go("/ui/alerts");
  if (!page.url().endsWith("/ui/sign-in")) fail(`not sent to sign in: ${page.url()}`);
  await look("sign-in");
  await page.type("#client", process.env.TOCSIN_CLIENT);
  await page.type("#secret", "not the secret");
  await submit("button[type=submit]");
  if (!(await text("#sign-in-error")).includes("wrong secret")) fail("a wrong secret was not refused");
  await page.$eval("#secret", (e) => (e.value = ""));
  await page.type("#secret", process.env.TOCSIN_SECRET);
  await submit("main button[type=submit]");
  if (!page.url().endsWith("/ui/")) fail(`sign-in did not lead to the overview: ${page.url()}`);
  ok("signed in");
  await look("overview");

  // The undelivered event, with its reason.
  await until("/ui/undelivered", "the undelivered event", () =>
    document.querySelector(".reasons li") !== null);
  const reason = await text(".reasons li");
  if (!/refused|connect/i.test(reason)) fail(`the failure reason does not say why: ${reason}`);
  ok(`an undelivered event shows its reason: ${reason}`);
  await look("undelivered");

  // Fix the action's destination in the configuration.
  await Promise.all([page.waitForNavigation(), page.click("a[href='/ui/configuration/action/hook']")]);
  const field = await page.$("input[name='property.destination']");
  if (!field) fail("the action's form has no destination field");
  await field.click({ clickCount: 3 });
  await page.$eval("input[name='property.destination']", (e) => (e.value = ""));
  await field.type(process.env.FIXED_DESTINATION);
  await submit("form.card button[type=submit]");
  if (!(await text(".notice")).startsWith("Saved")) fail("the action was not saved");
  const saved = await page.$eval("input[name='property.destination']", (e) => e.value);
  if (saved !== process.env.FIXED_DESTINATION) fail(`the destination reads ${saved}`);
  ok("fixed the action's destination");
  await look("action");

  // Redeliver, and see it delivered.
  await go("/ui/undelivered");
  await submit("article form button[type=submit]");
  if (!(await text(".notice")).startsWith("1 event(s) sent again")) fail("the redelivery was not confirmed");
  ok("redelivered the event");
  await until("/ui/undelivered", "the undelivered list to empty", () =>
    document.querySelector("main").textContent.includes("Nothing is undelivered."));
  await go("/ui/alerts");
  await look("alerts");
  // htmx: choosing a state refreshes the list in place (the page stays; its URL follows).
  await page.evaluate(() => (window.stayed = true));
  await page.select("#state", "resolved");
  await page.waitForFunction(() => location.search.includes("state=resolved") &&
    document.querySelector("#results").textContent.includes("No alert matches."));
  if (!(await page.evaluate(() => window.stayed === true))) fail("filtering reloaded the whole page");
  ok("htmx refreshes the alert list in place as a filter changes");
  await go("/ui/alerts");
  const alertLink = await page.$eval("#results tbody a", (a) => a.getAttribute("href"));
  await until(alertLink, "the redelivered attempt on the timeline", () =>
    [...document.querySelectorAll(".line-delivery")].some((li) =>
      li.textContent.includes("hook") && li.textContent.includes("delivered") && !li.textContent.includes("undelivered")));
  ok("the timeline shows the event delivered to the fixed action");

  // Acknowledge.
  await page.type("#comment", "on it from the console");
  await submit("button[value=acknowledge]");
  if (!(await text(".notice")).startsWith("Acknowledged")) fail("the acknowledgement was not confirmed");
  await until(alertLink, "the acknowledgement on the timeline", () =>
    document.querySelector("#alert-state").textContent === "acknowledged" &&
    [...document.querySelectorAll(".line-action")].some((li) => li.textContent.includes("via console")));
  ok("acknowledged the alert; the timeline says who, via the console");
  await look("alert");

  // Silence alerts like this one.
  await Promise.all([page.waitForNavigation(), page.click("a[href^='/ui/silences?alert=']")]);
  if ((await page.$eval("#key0", (e) => e.value)) !== "eventType") fail("the silence is not prefilled");
  const eventType = await page.$eval("#value0", (e) => e.value);
  await page.type("#silence-comment", "while the disk is replaced");
  await submit("form[action='/ui/silences'] button[type=submit]");
  if (!(await text(".notice")).startsWith("Silence created")) fail("the silence was not created");
  const listed = await text("table tbody");
  if (!listed.includes(`eventType EQUALS ${eventType}`) || !listed.includes("active")) fail(`the silence is not listed: ${listed}`);
  ok("created a silence from the alert");
  await look("silences");

  // A Teams card's Resolve link, opened in the signed-in browser: a confirmation page that
  // changes nothing, then its button resolves as the signed-in client.
  await go(process.env.ACT_LINK);
  const asked = await text("main");
  if (!asked.includes("Nothing has changed yet")) fail(`the link's page does not ask first: ${asked}`);
  await look("act-link");
  await submit("main form button[type=submit]");
  const done = await text("main [role=status]");
  if (!done.includes("resolved by ops")) fail(`the link did not resolve as the signed-in client: ${done}`);
  ok(`a Teams link's confirmation resolved the alert: ${done}`);
  await look("act-done");

  // An invalid condition: the API's message next to the field.
  await go("/ui/configuration");
  await look("configuration");
  await go("/ui/configuration/condition");
  await page.type("#name", "console-made");
  await page.type("#propertyKey", "eventType");
  await page.type("#predicate", "SOMETIMES");
  await page.type("#propertyValue", "DiskFull");
  await submit("form.card button[type=submit]");
  const error = await text("#predicate-error");
  if (!error.includes("`predicate`") || !error.includes("SOMETIMES")) fail(`no error by the field: ${error}`);
  const invalid = await page.$eval("#predicate", (e) => e.getAttribute("aria-invalid"));
  if (invalid !== "true") fail("the predicate field is not marked invalid");
  ok(`an invalid condition shows the field's error: ${error}`);
  await look("condition-invalid");

  // A phone-width look.
  await page.setViewport({ width: 390, height: 844, isMobile: true });
  await go(alertLink);
  await look("alert-phone");
  await go("/ui/");
  await shot("overview-phone");
  await page.setViewport({ width: 1280, height: 900 });

  // Sign out: the session is over.
  await submit(".who button[type=submit]");
  if (!page.url().endsWith("/ui/sign-in")) fail(`sign-out did not lead to sign-in: ${page.url()}`);
  await go("/ui/alerts");
  if (!page.url().endsWith("/ui/sign-in")) fail("the session outlived the sign-out");
  ok("signed out");
  console.log("all steps passed");
} catch (e) {
  await shot("failure").catch(() => {});
  console.log(`not ok - ${e.message}`);
  console.log(`at ${page.url()}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
