"""Several teams in the browser: a user in two teams uploads, launches and watches a job in
each, switching with the header's switch (which persists, and which every page and form
follows); an owner invites someone with a link, who sets a password and joins."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Pages, screenshot
from tests.helpers import TINY_MODEL, SharedServices, chat_rows, jsonl, once

STEPS = 6


class TwoTeams:
    """ada, owner of acme and member of globex, signed in once for the class."""

    def __init__(self, pages: Pages, email: str, files, queue: str) -> None:
        self.pages = pages
        self.email = email
        self.page = pages.sign_in(email)
        self.files = files
        self.queue = queue

    def switch_to(self, team: str) -> None:
        with self.page.expect_navigation():
            self.page.select_option("#team-switch", label=team)
        expect(self.page.locator("#team-switch option:checked")).to_have_text(team)

    def upload(self, name: str, rows: int) -> None:
        self.page.goto("/datasets")
        path = self.files / name
        path.write_bytes(jsonl(chat_rows(rows)))
        self.page.set_input_files("#file-input", str(path))
        expect(self.page.locator(".success")).to_contain_text(f"Uploaded {name} ({rows} rows")

    def launch(self, name: str, dataset: str) -> int:
        page = self.page
        page.goto("/jobs/new")
        expect(page.locator("#dataset option")).to_have_count(1)  # the current team's dataset only
        expect(page.locator("#dataset option")).to_contain_text(dataset)
        page.select_option("select[name='spec.base_model']", TINY_MODEL)
        page.fill("input[name='name']", name)
        page.fill("input[name='spec.max_steps']", str(STEPS))
        page.fill("input[name='spec.batch_size']", "4")
        page.fill("input[name='spec.max_seq_length']", "128")
        page.click("details.advanced summary")
        page.fill("input[name='spec.logging_steps']", "1")
        page.fill("input[name='queue']", self.queue)
        expect(page.locator("#page-team")).to_have_text(page.locator("#team-switch option:checked").text_content())
        screenshot(page, "new-job-in-team")
        page.click("#launch")
        page.wait_for_url(re.compile(r".*/jobs/\d+$"))
        return int(page.url.rsplit("/", 1)[1])

    def watch_to_success(self, job_id: int) -> None:
        self.page.goto(f"/jobs/{job_id}")
        expect(self.page.locator("#job-state .state")).to_have_text("succeeded", timeout=240_000)
        expect(self.page.locator("#loss-chart")).to_have_attribute("data-points", str(STEPS))

    @once
    def acme_job(self) -> int:
        """Uploaded and launched in acme, the first team, without switching."""
        self.upload("acme-colours.jsonl", 24)
        return self.launch("acme job", "acme-colours.jsonl")

    @once
    def globex_job(self) -> int:
        """Uploaded and launched in globex, after switching to it."""
        self.acme_job()
        self.page.goto("/")
        self.switch_to("globex")
        self.upload("globex-colours.jsonl", 28)
        return self.launch("globex job", "globex-colours.jsonl")


@pytest.fixture(scope="class")
def two_teams(browser, migrated_database, shared_models_dir, redis_url, tmp_path_factory):
    from app.accounts.teams import find_team, set_membership
    from app.core.database import session_scope
    from app.core.tables import Role, User

    with SharedServices(migrated_database, tmp_path_factory.mktemp("data"), shared_models_dir, redis_url) as services:
        server = services.serve()
        ada = services.account(team="acme", role="owner")
        services.account(team="globex", role="owner")
        with session_scope() as session:
            set_membership(
                session, team=find_team(session, "globex"), user=session.get(User, ada.user_id), role=Role.member
            )
        services.workers.start()
        pages = Pages(browser, server)
        try:
            yield TwoTeams(pages, ada.email, tmp_path_factory.mktemp("files"), services.workers.queue)
        finally:
            pages.close()


class TestAUserInTwoTeams:
    @pytest.fixture(autouse=True)
    def _no_javascript_errors(self, two_teams):
        yield
        errors = list(two_teams.pages.errors)
        two_teams.pages.errors.clear()
        assert errors == [], "JavaScript errors on the pages"

    def test_the_header_says_which_team_one_works_in(self, two_teams):
        page = two_teams.page
        page.goto("/")
        expect(page.locator("label[for=team-switch]")).to_have_text("Working in")
        expect(page.locator("#team-switch option:checked")).to_have_text("acme")
        expect(page.locator("#page-team")).to_have_text("acme")

    def test_uploads_and_launches_in_the_first_team_need_no_choice(self, two_teams):
        job_id = two_teams.acme_job()
        expect(two_teams.page.locator("#page-team")).to_have_text("acme")
        two_teams.watch_to_success(job_id)

    def test_after_switching_uploads_launches_and_lists_are_the_other_teams(self, two_teams):
        page = two_teams.page
        job_id = two_teams.globex_job()
        expect(page.locator("#page-team")).to_have_text("globex")
        two_teams.watch_to_success(job_id)
        screenshot(page, "job-in-second-team")
        page.goto("/")
        expect(page.locator("#jobs-body tr")).to_have_count(1)
        expect(page.locator("#jobs-body")).to_contain_text("globex job")
        page.goto("/datasets")
        expect(page.locator("#datasets-body tr")).to_have_count(1)
        expect(page.locator("#datasets-body")).to_contain_text("globex-colours.jsonl")
        screenshot(page, "datasets-second-team")

    def test_the_choice_persists_across_sign_ins(self, two_teams):
        two_teams.globex_job()
        again = two_teams.pages.sign_in(two_teams.email)
        expect(again.locator("#team-switch option:checked")).to_have_text("globex")
        expect(again.locator("#jobs-body tr")).to_have_count(1)
        expect(again.locator("#jobs-body")).to_contain_text("globex job")
        again.context.close()

    def test_switching_back_shows_the_first_teams_jobs_and_launch_again_offers_its_data(self, two_teams):
        page = two_teams.page
        acme_job, globex_job = two_teams.acme_job(), two_teams.globex_job()
        page.goto(f"/jobs/{acme_job}")  # a link into the other team offers to switch
        expect(page.locator("h1")).to_have_text("This job is in team acme")
        screenshot(page, "other-team-switch")
        with page.expect_navigation():
            page.click("#switch-to-team")
        expect(page).to_have_url(re.compile(rf".*/jobs/{acme_job}$"))
        expect(page.locator("#job-state .state")).to_have_text("succeeded")
        page.click("text=Launch again…")
        expect(page.locator("#dataset option")).to_have_count(1)
        expect(page.locator("#dataset option")).to_contain_text("acme-colours.jsonl")
        expect(page.locator("#page-team")).to_have_text("acme")
        page.goto("/")
        rows = page.locator("#jobs-body tr")
        expect(rows).to_have_count(1)
        expect(rows).to_contain_text("acme job")
        assert page.locator(f"tr[data-job='{globex_job}']").count() == 0
        screenshot(page, "dashboard-team")


def test_an_owner_invites_and_the_invitee_sets_a_password_and_joins(pages, make_account):
    owner = make_account(team="acme", role="owner")
    page = pages.sign_in(owner.email)
    page.goto("/settings")
    card = page.locator(".team-card[data-team='acme']")
    card.locator("input[name=email][placeholder='Email to invite']").fill("newcomer@example.com")
    card.locator("form.invite select[name=role]").select_option("viewer")
    card.locator("form.invite button[type=submit]").click()
    link = card.locator(".invitation-url")
    expect(link).to_contain_text("/invite/")
    expect(card.locator("table.invitations")).to_contain_text("newcomer@example.com")
    screenshot(page, "settings-invitations")
    url = link.text_content()

    context = pages.browser.new_context(base_url=pages.base_url, viewport={"width": 900, "height": 700})
    pages.contexts.append(context)
    invitee = context.new_page()
    invitee.on("pageerror", lambda error: pages.errors.append(f"{invitee.url}: {error}"))
    invitee.goto(url)
    expect(invitee.locator("h1")).to_have_text("Join acme")
    expect(invitee.locator("#invited-role")).to_have_text("viewer")
    screenshot(invitee, "invitation")
    invitee.fill("input[name=password]", "a long enough password")
    invitee.fill("input[name=password_again]", "a long enough password")
    invitee.click("button[type=submit]")
    invitee.wait_for_url(pages.base_url + "/")
    expect(invitee.locator(".user-email")).to_have_text("newcomer@example.com")
    expect(invitee.locator("#current-team")).to_have_text("acme")

    invitee.goto(url)  # the link worked once
    expect(invitee.locator(".error")).to_contain_text("used already")
    page.reload()
    members = page.locator(".team-card[data-team='acme'] table").first
    expect(members).to_contain_text("newcomer@example.com")
    expect(page.locator(".team-card[data-team='acme'] table.invitations")).to_be_hidden()
