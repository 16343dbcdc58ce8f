"""The filing lane (the pipeline's shortcut past aiogram's routing) takes exactly
the updates the filing router would take, and nothing else."""

from __future__ import annotations

from typing import Any

from aiogram.types import Chat, Update

from bot.callbacks import MenuAction, MenuButton
from bot.middlewares import UpdatePipeline, _routing_after
from bot.routers.citizen import filing_route
from tests.conftest import App
from tests.flows import ZH, to_title


async def test_the_lane_takes_exactly_what_the_filing_router_would(app: App) -> None:
    dp = app.sim.dp
    pipeline: UpdatePipeline = dp["pipeline"]
    filing = next(router for router in dp.sub_routers if router.name == "filing")
    routed: set[int] = set()
    lane: dict[int, bool] = {}

    async def spy(handler: Any, event: Any, data: dict[str, Any]) -> Any:
        routed.add(data["event_update"].update_id)  # the router's filters let it through
        return await handler(event, data)

    async def probe(update: Update, data: dict[str, Any]) -> bool:
        lane[update.update_id] = await filing_route(update, data) is not None
        return False  # aiogram routes every update, so the two can be compared

    filing.message.middleware(spy)
    filing.callback_query.middleware(spy)
    pipeline.lane = probe

    citizen = app.sim.citizen()
    await citizen.send("/start")  # not filing
    await to_title(citizen)  # a command, buttons and typed answers
    await citizen.send("/help")
    await citizen.send("  /help")
    await citizen.send_photo(caption="/help")
    await citizen.send_photo()  # an answer, even if not the one asked for
    await citizen.send_sticker()
    await citizen.press_data("i:not-a-button")
    await citizen.press_data(MenuButton(action=MenuAction.STATUS).pack())  # a question asked elsewhere
    await citizen.send("DG-2345-6789 ABCDEFGHJK")  # its answer, not the filing's
    await citizen.send("/new")
    await citizen.send("拖欠工资")
    stale = citizen.press_update(ZH["cancel"])
    await citizen.press(ZH["cancel"])
    await citizen.press(ZH["yes_cancel"])
    await app.sim.feed(stale)  # a button of a filing that is over
    edited = citizen.message_update(text="改过的")
    await app.sim.feed(Update(update_id=app.sim.next_update_id(), edited_message=edited.message))
    group = app.sim.staff(citizen.user.id, -100777)  # the same person in a group the bot is in
    await group.send("虎门")
    await app.sim.feed(Update(update_id=app.sim.next_update_id(), message=citizen.message_update(
        text="x").message.model_copy(update={"chat": Chat(id=-100778, type="group")})))

    assert lane and set(lane) >= routed
    assert {update_id for update_id, took in lane.items() if took} == routed
    assert 0 < len(routed) < len(lane)  # both kinds were seen


async def test_a_batch_goes_straight_to_the_pipeline_only_while_the_dispatcher_has_aiogram_s_defaults(
        app: App) -> None:
    dp = app.sim.dp
    pipeline: UpdatePipeline = dp["pipeline"]
    assert _routing_after(dp, pipeline) is not None

    async def on_error(event: Any) -> None:  # would swallow a failure inside the batch's transaction
        return None

    dp.errors.register(on_error)
    assert _routing_after(dp, pipeline) is None
    dp.errors.handlers.clear()

    async def watcher(handler: Any, event: Any, data: dict[str, Any]) -> Any:
        return await handler(event, data)

    dp.update.outer_middleware(watcher)  # wants to see every update
    assert _routing_after(dp, pipeline) is None
