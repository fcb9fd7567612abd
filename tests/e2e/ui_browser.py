"""The browser half of tests/e2e/test_ui.sh: headless Debian chromium, driven
over WebDriver by selenium, walks the web UI as its users would, selecting
elements by the ids and classes the UI promises (README, "Web UI").

test_ui.sh has already started portcullis (alice is an admin, bob is not),
pushed the images with docker (apps/web:v1.0.0 with labels, user and
entrypoint; signed/app:1 signed with cosign, signed/app:unsigned-1 not;
private/secret:1, which anonymous callers may not pull) and had bob's push
over the immutable v1.0.0 refused. This script prints one TAP line per check
(`ok - ...` / `not ok - ...`, diagnostics as `#` lines), records each in
$E2E_RESULTS as lib.sh does, and saves screenshots of the main pages.

Environment (set by test_ui.sh): UI_REGISTRY (host:port), UI_ALICE_PASSWORD,
UI_BOB_PASSWORD, UI_WEB_DIGEST, UI_SIGNED_DIGEST, UI_UNSIGNED_DIGEST,
UI_SCREENSHOTS (a directory), UI_WORK (scratch), UI_STEP_TIMEOUT (seconds for
one docker command), E2E_RESULTS; DOCKER_HOST and DOCKER_CONFIG for docker.
"""

import base64
import os
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

# selenium-manager must never look for a driver or a browser to download:
# both are given below, and it is told to stay offline should it run at all.
os.environ["SE_OFFLINE"] = "true"
os.environ.setdefault("SE_AVOID_STATS", "true")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import (  # noqa: E402
    NoAlertPresentException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REG = os.environ["UI_REGISTRY"]
BASE = f"http://{REG}"
ALICE_PASSWORD = os.environ["UI_ALICE_PASSWORD"]
BOB_PASSWORD = os.environ["UI_BOB_PASSWORD"]
WEB_DIGEST = os.environ["UI_WEB_DIGEST"]
SIGNED_DIGEST = os.environ["UI_SIGNED_DIGEST"]
UNSIGNED_DIGEST = os.environ["UI_UNSIGNED_DIGEST"]
SCREENSHOTS = os.environ["UI_SCREENSHOTS"]
WORK = os.environ["UI_WORK"]
STEP_TIMEOUT = int(os.environ.get("UI_STEP_TIMEOUT", "180"))
RESULTS = os.environ["E2E_RESULTS"]

SESSION_COOKIE = "portcullis_session"
XSS_LABEL = "<script>alert(1)</script>"
QUOTES_LABEL = "a \"quoted\" & <b>bold</b> 'value'"


# ---------------------------------------------------------------- reporting


class Failed(Exception):
    """A check that did not hold; its message says what was seen."""


def record(passed, description, detail=""):
    print(f"{'ok' if passed else 'not ok'} - {description}", flush=True)
    with open(RESULTS, "a") as results:
        results.write("ok\n" if passed else "not ok\n")
    if not passed and detail:
        for line in str(detail).strip().splitlines()[-25:]:
            print(f"#   {line[:300]}", flush=True)


def check(description, step):
    """Runs STEP (a function); passes unless it raises. Returns its result, or None."""
    try:
        result = step()
    except Failed as err:
        record(False, description, f"{err}\n(at {driver_url()})")
        return None
    except WebDriverException as err:  # no such element, a timeout: this check's failure
        where = traceback.extract_tb(err.__traceback__)
        line = "\n".join([f"line {f.lineno}: {f.line}" for f in where if f.filename == __file__][1:])
        record(False, description, f"{type(err).__name__}: {(err.msg or '').splitlines()[0] if err.msg else ''}\n"
               f"{line}\n(at {driver_url()})")
        return None
    except Exception:  # a bug of this script is this check's failure, not the run's
        record(False, description, f"{traceback.format_exc()}(at {driver_url()})")
        return None
    record(True, description)
    return result


def expect(condition, message):
    if not condition:
        raise Failed(message)


def expect_eq(expected, actual, what):
    if expected != actual:
        raise Failed(f"{what}: expected {expected!r}, got {actual!r}")


# ---------------------------------------------------------------- the browser


def start_browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root, in a container without user namespaces
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        f"--user-data-dir={WORK}/chromium-profile",
    ):
        options.add_argument(argument)
    service = Service(
        executable_path="/usr/bin/chromedriver",
        log_output=f"{WORK}/chromedriver.log",
    )
    browser = webdriver.Chrome(service=service, options=options)
    browser.set_page_load_timeout(30)
    return browser


driver = None


def driver_url():
    try:
        return driver.current_url
    except Exception:
        return "?"


def go(path):
    driver.get(BASE + path)


def one(css):
    return driver.find_element(By.CSS_SELECTOR, css)


def every(css, within=None):
    return (within or driver).find_elements(By.CSS_SELECTOR, css)


def present(css):
    return len(every(css)) > 0


def text(css, within=None):
    return (within or driver).find_element(By.CSS_SELECTOR, css).text.strip()


def viewer():
    return text("nav #viewer")


def gone(element):
    """Whether `element` left the document (a new page replaced it). Chromium
    answers a stale node either with StaleElementReferenceException or, while
    the old document is being torn down, with an inspector error ("Node with
    given id does not belong to the document"): both mean it is gone."""

    def check(_driver):
        try:
            element.is_enabled()
            return False
        except StaleElementReferenceException:
            return True
        except WebDriverException as e:
            if "does not belong to the document" in str(e) or "No node with given id" in str(e):
                return True
            raise

    return check


def submit_with(button):
    """Clicks a form's submit button and waits for the next page to load."""
    page = driver.find_element(By.TAG_NAME, "html")
    button.click()
    WebDriverWait(driver, 15).until(gone(page))
    WebDriverWait(driver, 15).until(lambda d: d.find_elements(By.TAG_NAME, "body"))


def form_button(form):
    return form.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit], button:not([type])")


def screenshot(name, height=None):
    """The whole page (or its top HEIGHT px; at most 4000) as SCREENSHOTS/NAME.png."""
    path = os.path.join(SCREENSHOTS, f"{name}.png")
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    width = metrics["cssLayoutViewport"]["clientWidth"]
    height = min(height or metrics["cssContentSize"]["height"], 4000)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png",
        "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })
    with open(path, "wb") as out:
        out.write(base64.b64decode(shot["data"]))
    expect(os.path.getsize(path) > 10_000, f"{path} holds an image ({os.path.getsize(path)} bytes)")


def readme_picture():
    """SCREENSHOTS/readme.png: the repositories and decisions pages side by
    side at half size, the picture README.md shows (docs/ui.png, copied by hand)."""
    shots = [os.path.join(SCREENSHOTS, f"{name}.png") for name in ("repositories", "decisions")]
    expect(all(os.path.exists(s) for s in shots), "the repositories and decisions screenshots")
    page = os.path.join(WORK, "readme.html")
    with open(page, "w") as out:
        out.write('<!DOCTYPE html><body style="margin:0;background:#cbd5e1;display:flex;gap:4px;align-items:flex-start">'
                  + "".join(f'<img style="width:638px" src="file://{s}">' for s in shots) + "</body>")
    driver.get(f"file://{page}")
    WebDriverWait(driver, 10).until(lambda d: all(
        img.get_attribute("complete") == "true" and int(img.get_attribute("naturalWidth") or 0) > 0
        for img in d.find_elements(By.TAG_NAME, "img")))
    screenshot("readme", height=driver.find_element(By.TAG_NAME, "body").rect["height"])


def no_alert():
    try:
        alert = driver.switch_to.alert
        message = alert.text
        alert.dismiss()
        raise Failed(f"a JavaScript alert opened: {message!r}")
    except NoAlertPresentException:
        pass


def rows(css, cells):
    """Each row matching CSS as a dict of its cells' texts (cell class -> text)."""
    out = []
    for row in every(css):
        entry = {}
        for cell in cells:
            found = every(f"td.{cell}", row)
            entry[cell] = found[0].text.strip() if found else None
        entry["_row"] = row
        out.append(entry)
    return out


def repository_names():
    return [link.text.strip() for link in every("table#repositories tr.repository a.repository-link")]


# ---------------------------------------------------------------- outside the browser


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http_get(path, cookie=None):
    """(status, Location, body) of a GET that follows no redirect."""
    request = urllib.request.Request(BASE + path)
    if cookie:
        request.add_header("Cookie", f"{SESSION_COOKIE}={cookie}")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=15) as response:
            return response.status, response.headers.get("Location"), response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Location"), err.read().decode(errors="replace")


def docker(*args, stdin=None):
    """Runs the docker CLI; (exit status, output)."""
    try:
        done = subprocess.run(
            ["docker", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return 124, f"docker {' '.join(args)}: no answer in {STEP_TIMEOUT} s"
    return done.returncode, done.stdout + done.stderr


# ---------------------------------------------------------------- the steps


def sign_in_with_password(user, password, return_to=None):
    go("/ui/signin" + (f"?return={urllib.parse.quote(return_to, safe='')}" if return_to else ""))
    form = one("form#signin")
    form.find_element(By.NAME, "user").send_keys(user)
    form.find_element(By.NAME, "password").send_keys(password)
    submit_with(one("#signin-submit"))


def sign_out():
    submit_with(one("form#signout #signout-submit"))


def anonymous_visit():
    def lists_public_repositories():
        go("/ui/")
        expect_eq("anonymous", viewer(), "#viewer")
        expect(present("nav a#signin"), "no a#signin in the nav")
        expect(not present("form#signout"), "form#signout shown to an anonymous visitor")
        names = repository_names()
        for name in ("apps/web", "signed/app"):
            expect(name in names, f"{name} missing from {names}")
        expect("private/secret" not in names, f"private/secret listed to an anonymous visitor: {names}")

    check("anonymous /ui/ lists apps/web and signed/app, not private/secret", lists_public_repositories)

    def private_repository_is_not_found():
        go("/ui/r/private/secret")
        expect(not present("table#tags"), "the tags of private/secret are shown")
        expect(SIGNED_DIGEST not in driver.page_source, "the digest of private/secret:1 is on the page")
        status, _, _ = http_get("/ui/r/private/secret")
        expect_eq(404, status, "status of /ui/r/private/secret")
        status, _, _ = http_get("/ui/r/no/such-repository")
        expect_eq(404, status, "status of a repository that does not exist")

    check("anonymous /ui/r/private/secret is a 404 page, like a missing repository", private_repository_is_not_found)

    def public_image_without_forms():
        go("/ui/r/apps/web")
        expect("v1.0.0" in [r.get_attribute("data-tag") for r in every("table#tags tr.tag")], "v1.0.0 not listed")
        go("/ui/r/apps/web/:v1.0.0")
        expect(present("code#pull-by-tag"), "no code#pull-by-tag")
        expect(not present("form#delete-tag") and not present("form#delete-manifest"),
               "delete forms shown to an anonymous visitor")

    check("anonymous /ui/r/apps/web lists v1.0.0; its image page has no delete forms", public_image_without_forms)

    def search_finds_by_name():
        go("/ui/")
        box = one("form#search input[name=q]")
        box.send_keys("signed")
        submit_with(one("form#search").find_element(By.CSS_SELECTOR, "button, input[type=submit]"))
        expect_eq(["signed/app"], repository_names(), "repositories found by q=signed")

    check("the search form finds signed/app by q=signed", search_finds_by_name)

    def decisions_want_a_sign_in():
        go("/ui/decisions")
        expect("/ui/signin" in driver.current_url, f"not sent to the sign-in page: {driver.current_url}")
        expect(present("form#signin"), "no form#signin")

    check("anonymous /ui/decisions sends the browser to the sign-in page", decisions_want_a_sign_in)


def password_sign_in():
    def wrong_password_is_refused():
        sign_in_with_password("alice", "not-" + ALICE_PASSWORD)
        expect(present("#error"), "no #error after a wrong password")
        expect(text("#error") != "", "#error is empty")
        expect_eq("anonymous", viewer(), "#viewer after a wrong password")
        expect(driver.get_cookie(SESSION_COOKIE) is None, "a session cookie after a wrong password")

    check("sign-in with a wrong password shows #error and no session", wrong_password_is_refused)

    def alice_signs_in():
        go("/ui/decisions")  # redirected to the sign-in page, which returns here
        form = one("form#signin")
        expect("/ui/decisions" in form.find_element(By.NAME, "return").get_attribute("value"),
               "the sign-in form does not carry return=/ui/decisions")
        form.find_element(By.NAME, "user").send_keys("alice")
        form.find_element(By.NAME, "password").send_keys(ALICE_PASSWORD)
        submit_with(one("#signin-submit"))
        expect_eq(BASE + "/ui/decisions", driver.current_url.split("?")[0], "page after sign-in")
        expect_eq("alice", viewer(), "#viewer")
        expect(present("form#signout input[name=csrf]"), "no form#signout with a csrf field")
        cookie = driver.get_cookie(SESSION_COOKIE)
        expect(cookie is not None, f"no {SESSION_COOKIE} cookie")
        expect(cookie.get("httpOnly") is True, f"the session cookie is not HttpOnly: {cookie}")
        expect(cookie.get("sameSite") in ("Lax", "Strict"), f"the session cookie's SameSite: {cookie}")
        expect(cookie.get("path") in ("/ui", "/ui/"), f"the session cookie's path: {cookie}")

    check("alice signs in with the password form and returns to /ui/decisions", alice_signs_in)


def browse_as_alice():
    def sees_private_repositories():
        go("/ui/")
        names = repository_names()
        for name in ("apps/web", "signed/app", "private/secret"):
            expect(name in names, f"{name} missing from {names}")
        screenshot("repositories")

    check("alice's /ui/ lists private/secret too (screenshot repositories.png)", sees_private_repositories)

    def tags_of_apps_web():
        go("/ui/")
        link = [a for a in every("a.repository-link") if a.text.strip() == "apps/web"]
        expect(link, "no link to apps/web")
        link[0].click()
        WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table#tags"))
        tags = {row.get_attribute("data-tag"): row for row in every("table#tags tr.tag")}
        expect(set(tags) >= {"v1.0.0", "bob"}, f"tags shown: {sorted(tags)}")
        release = tags["v1.0.0"]
        expect(text("td.tag-name", release).startswith("v1.0.0"), f"td.tag-name: {text('td.tag-name', release)!r}")
        expect_eq("v1.0.0", text("a.tag-link", release), "a.tag-link")
        digest = text("td.digest", release)
        expect(WEB_DIGEST.split(":")[1][:12] in digest, f"td.digest {digest!r} is not {WEB_DIGEST}")
        for cell in ("size", "platforms", "created"):
            expect(text(f"td.{cell}", release) != "", f"td.{cell} of v1.0.0 is empty")
        expect(any(ch.isdigit() for ch in text("td.size", release)), "td.size has no number")
        expect("linux/amd64" in text("td.platforms", release), f"td.platforms: {text('td.platforms', release)!r}")
        expect(len(every("span.immutable", release)) == 1, "v1.0.0 has no span.immutable")
        expect(len(every("span.immutable", tags["bob"])) == 0, "the tag bob is marked immutable")
        screenshot("tags")

    check("/ui/r/apps/web lists v1.0.0 (digest, size, platform, created) with span.immutable, "
          "and bob without (screenshot tags.png)", tags_of_apps_web)

    def image_page():
        go("/ui/r/apps/web")
        one("table#tags tr.tag[data-tag='v1.0.0']").find_element(By.CSS_SELECTOR, "a.tag-link").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "code#pull-by-digest"))
        expect(f"{REG}/apps/web:v1.0.0" in text("code#pull-by-tag"), f"code#pull-by-tag: {text('code#pull-by-tag')!r}")
        expect(f"{REG}/apps/web@{WEB_DIGEST}" in text("code#pull-by-digest"),
               f"code#pull-by-digest: {text('code#pull-by-digest')!r}")
        expect_eq("1000:1000", text("dd#user"), "dd#user")
        entrypoint = text("dd#entrypoint")
        expect("/usr/bin/server" in entrypoint and "8080" in entrypoint, f"dd#entrypoint: {entrypoint!r}")
        expect("--root" in text("dd#cmd"), f"dd#cmd: {text('dd#cmd')!r}")
        expect_eq("unknown", one("#signature-status").get_attribute("data-status"),
                  "#signature-status of apps/web (no signature policy there)")
        screenshot("image")

    check("the image page of apps/web:v1.0.0: pull lines, dd#user, dd#entrypoint, dd#cmd, "
          "signature status unknown (screenshot image.png)", image_page)

    def labels_are_text():
        go("/ui/r/apps/web/:v1.0.0")
        labels = {}
        for row in every("table#labels tr.label"):
            labels[text("th", row)] = text("td", row)
        expect_eq("web", labels.get("org.opencontainers.image.title"), "label org.opencontainers.image.title")
        expect_eq(XSS_LABEL, labels.get("org.example.xss"), "label org.example.xss, as text")
        expect_eq(QUOTES_LABEL, labels.get("org.example.quotes"), "label org.example.quotes, as text")
        expect(not every("table#labels script, table#labels b"), "a label became markup")
        injected = [s for s in every("script") if "alert" in (s.get_attribute("innerHTML") or "")]
        expect(not injected, "a <script> with alert(1) is in the page")
        no_alert()

    check("labels are shown as text: <script>alert(1)</script> and <b>bold</b> literally, "
          "no script element, no alert", labels_are_text)

    def layers():
        go("/ui/r/apps/web/:v1.0.0")
        found = rows("table#layers tr.layer", ["digest", "size"])
        expect_eq(2, len(found), "layers (COPY server.bin, COPY index.html)")
        for layer in found:
            expect((layer["digest"] or "").startswith("sha256:"), f"td.digest {layer['digest']!r}")
            expect(any(ch.isdigit() for ch in layer["size"] or ""), f"td.size {layer['size']!r}")
        expect(found[0]["size"] != found[1]["size"], "the 300 kB layer and the small one show one size")

    check("table#layers lists the image's 2 layers with digests and sizes", layers)

    def by_digest():
        go(f"/ui/r/apps/web/@{WEB_DIGEST}")
        expect(f"{REG}/apps/web@{WEB_DIGEST}" in text("code#pull-by-digest"), "code#pull-by-digest")
        expect(not present("code#pull-by-tag"), "code#pull-by-tag on a page by digest")
        expect_eq("1000:1000", text("dd#user"), "dd#user")

    check("the same image by digest: /ui/r/apps/web/@sha256:...", by_digest)

    def signature_status(tag, digest, expected):
        def step():
            go(f"/ui/r/signed/app/:{tag}")
            expect(digest in text("code#pull-by-digest"), f"code#pull-by-digest is not {digest}")
            status = one("#signature-status").get_attribute("data-status")
            expect_eq(expected, status, f"#signature-status data-status of signed/app:{tag}")
            go(f"/ui/r/signed/app/@{digest}")
            expect_eq(expected, one("#signature-status").get_attribute("data-status"),
                      f"#signature-status data-status of signed/app@{digest}")

        return step

    def delete_tag(name, tag):
        go(f"/ui/r/{name}/:{tag}")
        submit_with(form_button(one("form#delete-tag")))

    def tags_of(name):
        go(f"/ui/r/{name}")
        return [r.get_attribute("data-tag") for r in every("table#tags tr.tag")]

    def immutable_tag_is_not_deleted():
        delete_tag("apps/web", "v1.0.0")
        expect(present("#error"), "no #error after deleting the immutable tag")
        expect("immutable" in text("#error"), f"#error does not say why: {text('#error')!r}")
        expect("v1.0.0" in tags_of("apps/web"), "v1.0.0 is gone")

    check("alice's form#delete-tag on apps/web:v1.0.0 is refused by immutable-releases; the tag stays",
          immutable_tag_is_not_deleted)

    def tag_is_deleted():
        delete_tag("apps/web", "old")
        expect_eq(BASE + "/ui/r/apps/web", driver.current_url, "page after deleting apps/web:old")
        tags = tags_of("apps/web")
        expect("old" not in tags and {"v1.0.0", "bob"} <= set(tags), f"tags after deleting old: {tags}")

    check("alice deletes apps/web:old with form#delete-tag: back on /ui/r/apps/web, the tag is gone", tag_is_deleted)

    check("signed/app:1, signed with the trusted key: #signature-status data-status=verified",
          signature_status("1", SIGNED_DIGEST, "verified"))
    check("signed/app:unsigned-1: #signature-status data-status=unverified",
          signature_status("unsigned-1", UNSIGNED_DIGEST, "unverified"))


def decisions_as_alice():
    def chain_and_refusal():
        go("/ui/decisions")
        policies = {r["name"]: r for r in rows("table#chain tr.policy", ["name", "module", "digest", "scope", "mode"])}
        expect(set(policies) == {"team-access", "immutable-releases", "signed-pulls"},
               f"table#chain policies: {sorted(policies)}")
        expect(policies["immutable-releases"]["module"].startswith("builtin:tag-immutability"),
               f"module of immutable-releases: {policies['immutable-releases']['module']!r}")
        expect("audit" in policies["signed-pulls"]["mode"], f"mode of signed-pulls: {policies['signed-pulls']['mode']!r}")
        expect("enforce" in policies["team-access"]["mode"], f"mode of team-access: {policies['team-access']['mode']!r}")
        expect("signed/**" in policies["signed-pulls"]["scope"], f"scope of signed-pulls: {policies['signed-pulls']['scope']!r}")
        expect(present("#last-reload"), "no #last-reload")
        form = one("form#filter")
        fill(form, "user", "bob")
        fill(form, "outcome", "deny")
        submit_with(form_button(form))
        found = rows("table#decisions tr.decision", ["time", "user", "action", "repository", "outcome", "policy", "reason"])
        expect(found, "no decision for user=bob outcome=deny")
        for decision in found:
            expect_eq("bob", decision["user"], "td.user of a filtered decision")
            expect("deny" in decision["outcome"].lower(), f"td.outcome of a filtered decision: {decision['outcome']!r}")
        refusal = [d for d in found if d["policy"].startswith("immutable-releases") and is_apps_web(d["repository"])]
        expect(refusal, "no refusal of bob's push to apps/web by immutable-releases: "
               + "; ".join(f"{d['policy']} {d['repository']} {d['action']}" for d in found))
        expect("push" in refusal[0]["action"].lower(), f"td.action: {refusal[0]['action']!r}")
        expect("v1.0.0" in refusal[0]["reason"], f"td.reason does not name the tag: {refusal[0]['reason']!r}")
        screenshot("decisions")

    check("alice (admin) sees table#chain and, filtered by user=bob outcome=deny, bob's push "
          "refused by immutable-releases (screenshot decisions.png)", chain_and_refusal)


def is_apps_web(repository):
    """td.repository: the repository's name, maybe with the reference (apps/web:v1.0.0)."""
    return repository == "apps/web" or repository.startswith(("apps/web:", "apps/web@"))


def fill(form, name, value):
    field = form.find_element(By.NAME, name)
    if field.tag_name == "select":
        select = Select(field)
        values = [o.get_attribute("value") for o in select.options]
        matching = [v for v in values if v == value] or [v for v in values if value in v]
        expect(matching, f"{name} offers {values}, not {value!r}")
        select.select_by_value(matching[0])
    else:
        field.clear()
        field.send_keys(value)


def tokens_as_alice():
    created = {}

    def forged_csrf_is_refused():
        go("/ui/tokens")
        before = len(every("table#tokens tr.token"))
        form = one("form#create-token")
        csrf = form.find_element(By.NAME, "csrf")
        driver.execute_script("arguments[0].value = 'forged'", csrf)
        form.find_element(By.NAME, "description").send_keys("forged")
        submit_with(one("#create-token-submit"))
        expect(not present("code#new-token"), "a token was created with a forged csrf field")
        go("/ui/tokens")
        expect_eq(before, len(every("table#tokens tr.token")), "tokens after the forged POST")

    check("creating a token with a forged csrf field is refused", forged_csrf_is_refused)

    def cross_site_form_is_refused():
        go("/ui/tokens")
        csrf = one("form#create-token").find_element(By.NAME, "csrf").get_attribute("value")
        before = len(every("table#tokens tr.token"))
        # Another site's page (here a file: page) with a form that posts to
        # the registry, even with alice's real csrf value (as if it leaked):
        # the browser sends no SameSite=Lax cookie with it, and its Origin
        # is not the registry's.
        attacker = os.path.join(WORK, "attacker.html")
        with open(attacker, "w") as out:
            out.write(f'<!DOCTYPE html><form method="post" action="{BASE}/ui/tokens">'
                      f'<input name="csrf" value="{csrf}"><input name="description" value="cross-site">'
                      f'<input name="expires_days" value="1"><button id="go" type="submit">go</button></form>')
        driver.get(f"file://{attacker}")
        submit_with(one("#go"))
        expect(not present("code#new-token"), "a cross-site form created a token")
        go("/ui/tokens")
        expect_eq(before, len(every("table#tokens tr.token")), "tokens after the cross-site POST")
        expect_eq("alice", viewer(), "#viewer after the cross-site POST")

    check("a form on another site posting to /ui/tokens, even with alice's csrf value, creates no token",
          cross_site_form_is_refused)

    def create():
        go("/ui/tokens")
        form = one("form#create-token")
        fill(form, "description", "browser test")
        fill(form, "expires_days", "1")
        submit_with(one("#create-token-submit"))
        secret = text("code#new-token")
        expect(len(secret) >= 32, f"code#new-token {secret!r}")
        login = text("code#docker-login")
        expect("docker login" in login and REG in login and "alice" in login and "--password-stdin" in login,
               f"code#docker-login: {login!r}")
        created["secret"] = secret

    check("alice creates a token on /ui/tokens: code#new-token and the docker login line", create)
    if "secret" not in created:
        return

    def listed():
        go("/ui/tokens")
        mine = [r for r in rows("table#tokens tr.token", ["token-id", "description", "expires", "last-used"])
                if r["description"] == "browser test"]
        expect_eq(1, len(mine), "rows of the token 'browser test'")
        expect(mine[0]["token-id"] and mine[0]["token-id"] in created["secret"],
               f"td.token-id {mine[0]['token-id']!r} is not part of the secret")
        expect(mine[0]["expires"], "td.expires is empty")
        expect(created["secret"] not in driver.page_source, "the secret is shown again on the list")
        created["id"] = mine[0]["token-id"]
        screenshot("tokens")

    check("the token is listed (id, description, expiry), its secret not shown again "
          "(screenshot tokens.png)", listed)

    def docker_login_with_token():
        status, out = docker("login", REG, "-u", "alice", "--password-stdin", stdin=created["secret"])
        expect(status == 0 and "Login Succeeded" in out, out)
        docker("rmi", f"{REG}/private/secret:1")
        status, out = docker("pull", f"{REG}/private/secret:1")
        expect(status == 0, out)

    check("docker login -u alice --password-stdin with the token, then docker pull private/secret:1",
          docker_login_with_token)

    def revoke():
        go("/ui/tokens")
        row = [r for r in rows("table#tokens tr.token", ["token-id", "description"]) if r["token-id"] == created.get("id")]
        expect(row, f"no row of token {created.get('id')}")
        submit_with(form_button(row[0]["_row"].find_element(By.CSS_SELECTOR, "form.revoke-token")))
        go("/ui/tokens")
        left = [r for r in rows("table#tokens tr.token", ["token-id"]) if r["token-id"] == created.get("id")]
        expect(not left, f"token {created.get('id')} is still listed after revocation")

    check("the token is revoked with its form.revoke-token", revoke)

    def login_fails():
        deadline = time.time() + 15
        while True:
            status, out = docker("login", REG, "-u", "alice", "--password-stdin", stdin=created["secret"])
            if status != 0:
                expect("unauthorized" in out.lower() or "401" in out, out)
                return
            if time.time() > deadline:
                raise Failed(f"docker login still succeeds 15 s after the revocation:\n{out}")
            time.sleep(0.5)

    check("docker login with the revoked token fails", login_fails)
    docker("logout", REG)


def storage_as_alice():
    def storage():
        deadline = time.time() + 30
        while True:
            go("/ui/storage")
            found = " | ".join(r.text for r in every("table#repository-bytes tr.repository-bytes"))
            if "apps/web" in found or time.time() > deadline:
                break
            time.sleep(1)
        expect("apps/web" in found, f"apps/web not in table#repository-bytes: {found}")
        expect(any(ch.isdigit() for ch in text("#total-bytes")), f"#total-bytes {text('#total-bytes')!r}")
        expect(present("#gc-would-free"), "no #gc-would-free")
        expect(present("#computed-at"), "no #computed-at")
        screenshot("storage")

    check("/ui/storage shows #total-bytes and apps/web's bytes (screenshot storage.png)", storage)


def sign_out_alice():
    def signs_out():
        cookie = driver.get_cookie(SESSION_COOKIE)
        expect(cookie is not None, "no session cookie before signing out")
        sign_out()
        expect_eq(BASE + "/ui/", driver.current_url, "page after signing out")
        expect_eq("anonymous", viewer(), "#viewer after signing out")
        expect(present("nav a#signin"), "no a#signin after signing out")
        expect(driver.get_cookie(SESSION_COOKIE) is None, "the session cookie is still set")
        go("/ui/tokens")
        expect("/ui/signin" in driver.current_url, f"/ui/tokens after signing out: {driver.current_url}")
        return cookie["value"]

    return check("alice signs out: the nav shows anonymous again, /ui/tokens wants a sign-in", signs_out)


def replayed_cookie(old):
    def refused():
        status, location, body = http_get("/ui/tokens", cookie=old)
        expect(status != 200 and (status in (401, 403) or "/ui/signin" in (location or "")),
               f"GET /ui/tokens with the signed-out cookie: {status} {location}\n{body[:300]}")

    check("the session cookie replayed after sign-out is refused", refused)


def bob():
    def open_redirect_is_refused():
        sign_in_with_password("bob", BOB_PASSWORD, return_to="//evil.example/ui/")
        expect(driver.current_url.startswith(BASE + "/ui/"), f"sign-in sent the browser to {driver.current_url}")
        expect_eq("bob", viewer(), "#viewer")

    check("bob signs in with return=//evil.example/ui/ and stays on this site", open_redirect_is_refused)

    def own_refusals_only():
        go("/ui/decisions")
        expect(not present("table#chain"), "bob (no admin) sees table#chain")
        expect(not present("form#filter"), "bob (no admin) sees form#filter")
        expect(present("h1"), "no h1")
        found = rows("table#decisions tr.decision", ["user", "outcome", "policy", "repository"])
        expect(found, "bob sees no decision")
        for decision in found:
            expect_eq("bob", decision["user"], "td.user of a decision bob sees")
            expect(decision["outcome"] != "allow", f"bob sees a decision that is no refusal: {decision['outcome']!r}")
        expect(any(d["policy"].startswith("immutable-releases") and is_apps_web(d["repository"]) for d in found),
               "bob does not see his refused push")

    check("bob's /ui/decisions: his own refusals only, no table#chain", own_refusals_only)

    def own_tokens_only():
        go("/ui/tokens")
        expect(present("form#create-token"), "no form#create-token")
        expect(not [r for r in rows("table#tokens tr.token", ["description"]) if r["description"] == "browser test"],
               "bob sees alice's token")

    check("bob's /ui/tokens does not list alice's token", own_tokens_only)

    def may_not_delete():
        go("/ui/r/apps/web/:bob")
        submit_with(form_button(one("form#delete-tag")))
        expect(present("#error"), "no #error after bob's delete")
        go("/ui/r/apps/web")
        expect("bob" in [r.get_attribute("data-tag") for r in every("table#tags tr.tag")], "the tag bob is gone")

    check("bob (no delete grant) cannot delete apps/web:bob from the page", may_not_delete)
    check("bob signs out", lambda: (sign_out(), expect_eq("anonymous", viewer(), "#viewer")))


def oidc():
    def signs_in():
        go("/ui/signin?return=%2Fui%2Fr%2Fapps%2Fweb")
        links = every("a.signin-oidc")
        expect_eq(1, len(links), "a.signin-oidc links")
        expect("Test IdP" in links[0].text, f"link text {links[0].text!r}")
        links[0].click()
        WebDriverWait(driver, 15).until(lambda d: d.current_url.startswith(BASE + "/ui/r/apps/web"))
        name = viewer()
        expect("johndoe" in name, f"#viewer {name!r} is not the provider's user johndoe")
        expect(present("table#tags"), "the return page /ui/r/apps/web is not shown")
        expect(present("form#signout"), "no form#signout")

    check("OIDC: a.signin-oidc (Test IdP) redirects through the provider and back, signed in as johndoe",
          signs_in)
    check("the OIDC user signs out", lambda: (sign_out(), expect_eq("anonymous", viewer(), "#viewer")))


def main():
    global driver
    started = time.time()
    try:
        driver = start_browser()
    except Exception:
        record(False, "headless chromium starts under chromedriver", traceback.format_exc())
        return 1
    record(True, f"headless chromium starts under chromedriver ({driver.capabilities.get('browserVersion')})")
    try:
        anonymous_visit()
        password_sign_in()
        browse_as_alice()
        decisions_as_alice()
        tokens_as_alice()
        storage_as_alice()
        old = sign_out_alice()
        if old:
            replayed_cookie(old)
        bob()
        oidc()
        check("the README picture: repositories and decisions side by side (screenshot readme.png)", readme_picture)
    finally:
        driver.quit()
    print(f"# browser steps: {time.time() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
