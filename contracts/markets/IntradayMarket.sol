// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IParticipantRegistry} from "../registry/IParticipantRegistry.sol";
import {IBalancingSource, IScheduleSink, IScheduleSource} from "../settlement/IScheduleSink.sol";
import {IIntradayMarket} from "./IIntradayMarket.sol";

/**
 * @title IntradayMarket
 * @notice The intra-day balancing market. An hour before each delivery hour, participants
 * submit updated forecasts of their net energy for its four slots; a slot's expected
 * imbalance is the sum over participants of forecast minus day-ahead schedule (those who send
 * no forecast are expected to keep to their schedule). Participants with flexibility offer it
 * per slot: upward (more generation, battery discharge, load shed, EV charging paused: the
 * participant sells) or downward (the reverse: it buys, and escrows its worst case like a
 * day-ahead bid). At gate closure (default 15 minutes before the slot) the auction activates
 * the cheapest flexibility that covers the imbalance, verified on chain from a result anyone
 * computes off chain; activations join the participants' schedules in settlement.
 *
 * @dev The auction. Imbalance R > 0 (the neighbourhood will use more than scheduled): upward
 * offers sorted by price ascending, ties by book index (time priority), are activated in that
 * order until R is covered, the last one partly. R < 0: downward offers sorted by price
 * descending (those who pay most first) cover -R the same way. R = 0, or no offer: nothing is
 * activated. Pay-as-clear: the price of the direction is the limit of the last activated
 * offer, so every activated upward offer is paid at least its limit and every downward one
 * pays at most its limit. Volume is min(|R|, offered). Energy is in whole Wh; a downward
 * offer's cost is ceil(activated * price / 1000), paid into the slot's settlement pool at
 * clearing (the rest of its escrow is refunded at once); upward offers are paid
 * floor(activated * price / 1000) from that pool when the slot is settled.
 *
 * A slot nobody clears before it starts has no activation; downward escrow is then refunded
 * by `cancelOffer`, allowed again once the slot has started.
 */
contract IntradayMarket is IIntradayMarket, IBalancingSource, AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant REGULATOR_ROLE = keccak256("REGULATOR_ROLE");
    /// @notice Most offers one slot's book takes, so that its clearing fits one transaction (2^24 gas)
    /// even when every offer is activated and refunded and its owner has no day-ahead order, whose
    /// schedule word the activation then creates (about 45k gas each).
    uint256 public constant MAX_BOOK_SIZE = 300;
    /// @notice Largest offer, in Wh, and highest price bound: see DayAheadMarket.
    uint256 public constant MAX_OFFER_WH = 2 ** 24;
    uint256 public constant MAX_PRICE = 2 ** 28;

    struct Book {
        uint32 size;
        bool cleared;
        bool up;
        uint48 price;
        uint64 activatedWh;
        int64 imbalanceWh;
        uint96 escrow;
    }

    struct Forecast {
        bool set;
        int40 deviationWh;
    }

    IERC20 public immutable token;
    IParticipantRegistry public immutable registry;
    /// @notice Where day-ahead schedules come from, to turn forecasts into expected deviations.
    IScheduleSource public immutable dayAhead;
    IScheduleSink public immutable settlement;
    uint256 public immutable slotSeconds;
    /// @notice The window of a slot opens this long before the start of its hour (1 h).
    uint256 public immutable openLeadSeconds;
    /// @notice The window of a slot closes this long before the slot starts (15 min).
    uint256 public immutable gateLeadSeconds;
    uint48 public priceFloor;
    uint48 public priceCap;
    /// @notice Sum of open downward escrows; the token balance of this contract.
    uint256 public totalEscrow;

    mapping(uint32 slot => mapping(address account => Offer)) private _offers;
    mapping(uint32 slot => mapping(address account => Forecast)) private _forecasts;
    mapping(uint32 slot => Book) private _books;

    constructor(
        IERC20 token_,
        IParticipantRegistry registry_,
        IScheduleSource dayAhead_,
        IScheduleSink settlement_,
        address admin,
        uint256 slotSeconds_,
        uint256 openLeadSeconds_,
        uint256 gateLeadSeconds_,
        uint256 floor_,
        uint256 cap_
    ) {
        if (
            address(token_) == address(0) || address(registry_) == address(0) || address(dayAhead_) == address(0)
                || address(settlement_) == address(0) || admin == address(0)
        ) revert BalancingZeroAddress();
        token = token_;
        registry = registry_;
        dayAhead = dayAhead_;
        settlement = settlement_;
        slotSeconds = slotSeconds_;
        openLeadSeconds = openLeadSeconds_;
        gateLeadSeconds = gateLeadSeconds_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(REGULATOR_ROLE, admin);
        _setBounds(floor_, cap_);
    }

    // ---------------------------------------------------------------- forecasts and offers

    /// @inheritdoc IIntradayMarket
    function submitForecasts(address account, uint32 firstSlot, int32[] calldata netWh) external {
        _checkAgent(account);
        for (uint256 k = 0; k < netWh.length; ++k) {
            uint32 slot = firstSlot + uint32(k);
            _checkWindow(slot);
            (int256 scheduled,, int256 activated) = dayAhead.scheduleOf(slot, account);
            int256 deviation = int256(netWh[k]) - scheduled - activated;
            Forecast storage f = _forecasts[slot][account];
            Book storage b = _books[slot];
            b.imbalanceWh = SafeCast.toInt64(int256(b.imbalanceWh) - (f.set ? int256(f.deviationWh) : int256(0)) + deviation);
            f.set = true;
            f.deviationWh = SafeCast.toInt40(deviation);
            emit ForecastSubmitted(account, slot, netWh[k], deviation);
        }
    }

    /// @inheritdoc IIntradayMarket
    function placeOffers(address account, OfferInput[] calldata inputs) external {
        _checkAgent(account);
        int256 net;
        for (uint256 i = 0; i < inputs.length; ++i) {
            net += _place(account, inputs[i]);
        }
        if (net > 0) {
            uint256 allowance = token.allowance(account, address(this));
            if (allowance < uint256(net)) revert OfferInsufficientAllowance(uint256(net), allowance);
            token.safeTransferFrom(account, address(this), uint256(net));
        } else if (net < 0) {
            token.safeTransfer(account, uint256(-net));
        }
    }

    /// @inheritdoc IIntradayMarket
    function cancelOffer(address account, uint32 slot) external {
        (address meterKey,,) = registry.signerOf(account);
        if (msg.sender != account && msg.sender != meterKey) revert OfferNotAgent(account, msg.sender);
        Book storage b = _books[slot];
        // Inside the window, or after an uncleared slot started: then it is the way to get escrow back.
        bool started = block.timestamp >= uint256(slot) * slotSeconds;
        if (!(started && !b.cleared)) _checkWindow(slot);
        Offer storage o = _offers[slot][account];
        if (!o.placed || o.qtyWh == 0) revert OfferNotFound(account, slot);
        uint256 refund = o.isUp ? 0 : _escrowOf(o.qtyWh, o.price);
        o.qtyWh = 0;
        b.escrow -= uint96(refund);
        totalEscrow -= refund;
        emit OfferCancelled(account, slot, refund);
        if (refund > 0) token.safeTransfer(account, refund);
    }

    // ---------------------------------------------------------------- clearing

    /// @inheritdoc IIntradayMarket
    function clear(Clearing calldata c) external {
        uint32 slot = c.slot;
        Book storage b = _books[slot];
        {
            (, uint256 closesAt) = window(slot);
            uint256 startsAt = uint256(slot) * slotSeconds;
            if (block.timestamp < closesAt || block.timestamp >= startsAt) revert BalancingClearingWindow(slot, closesAt, startsAt);
        }
        if (b.cleared) revert BalancingAlreadyCleared(slot);
        uint256 nu = c.ups.length;
        uint256 nd = c.downs.length;
        if (nu + nd != b.size) revert BalancingIncomplete(nu + nd, b.size);
        if (c.upActivationsWh.length != nu || c.downActivationsWh.length != nd) revert BalancingLengthMismatch();

        uint256[] memory seen = new uint256[](b.size / 256 + 1);
        Offer[] memory ups = _load(slot, c.ups, true, seen);
        Offer[] memory downs = _load(slot, c.downs, false, seen);

        int256 imbalance = b.imbalanceWh;
        bool up = imbalance > 0;
        uint256 need = up ? uint256(imbalance) : uint256(-imbalance);
        uint256[] memory upAct = new uint256[](nu);
        uint256[] memory downAct = new uint256[](nd);
        (uint256 volume, uint256 price) = up ? _activate(ups, need, upAct) : _activate(downs, need, downAct);
        if (price != c.price || volume != c.volumeWh) revert BalancingWrongResult(price, c.price, volume, c.volumeWh);

        // The activated offers, which join their owners' schedules in the day-ahead market.
        address[] memory activated = new address[](nu + nd);
        int256[] memory activatedWh = new int256[](nu + nd);
        uint256 count;
        for (uint256 i = 0; i < nu; ++i) {
            if (upAct[i] != c.upActivationsWh[i]) revert BalancingWrongActivation(c.ups[i], upAct[i], c.upActivationsWh[i]);
            if (upAct[i] > 0) {
                _offers[slot][c.ups[i]].activatedWh = uint40(upAct[i]);
                activated[count] = c.ups[i];
                activatedWh[count++] = -int256(upAct[i]);
                emit OfferActivated(c.ups[i], slot, true, upAct[i], 0);
            }
        }
        uint256 cost;
        uint256[] memory refunds = new uint256[](nd);
        for (uint256 j = 0; j < nd; ++j) {
            if (downAct[j] != c.downActivationsWh[j]) revert BalancingWrongActivation(c.downs[j], downAct[j], c.downActivationsWh[j]);
            uint256 paid = Math.ceilDiv(downAct[j] * price, 1000);
            refunds[j] = _escrowOf(downs[j].qtyWh, downs[j].price) - paid;
            cost += paid;
            if (downAct[j] > 0) {
                _offers[slot][c.downs[j]].activatedWh = uint40(downAct[j]);
                activated[count] = c.downs[j];
                activatedWh[count++] = int256(downAct[j]);
                emit OfferActivated(c.downs[j], slot, false, downAct[j], refunds[j]);
            }
        }
        totalEscrow -= b.escrow;
        b.escrow = 0;
        b.cleared = true;
        b.up = up;
        b.price = uint48(price);
        b.activatedWh = uint64(volume);
        emit BalancingCleared(slot, imbalance, up, volume, price, msg.sender);

        if (count > 0) {
            assembly ("memory-safe") {
                // Only the activated ones: shorten both lists in place.
                mstore(activated, count)
                mstore(activatedWh, count)
            }
            dayAhead.recordActivations(slot, activated, activatedWh);
        }

        for (uint256 j = 0; j < nd; ++j) {
            if (refunds[j] > 0) token.safeTransfer(c.downs[j], refunds[j]);
        }
        if (cost > 0) {
            token.safeTransfer(address(settlement), cost);
            settlement.recordSchedulePayment(slot, cost);
        }
    }

    /// @inheritdoc IIntradayMarket
    function setBounds(uint256 floor_, uint256 cap_) external onlyRole(REGULATOR_ROLE) {
        _setBounds(floor_, cap_);
    }

    // ---------------------------------------------------------------- views

    /// @inheritdoc IIntradayMarket
    function activationOf(uint32 slot, address account)
        external
        view
        returns (int256 activatedWh, uint256 price)
    {
        Book storage b = _books[slot];
        if (!b.cleared) return (0, 0);
        Offer storage o = _offers[slot][account];
        if (o.activatedWh == 0) return (0, b.price);
        activatedWh = o.isUp ? -int256(uint256(o.activatedWh)) : int256(uint256(o.activatedWh));
        price = b.price;
    }

    /// @inheritdoc IBalancingSource
    function slotResult(uint32 slot)
        external
        view
        override(IIntradayMarket, IBalancingSource)
        returns (uint256 upWh, uint256 downWh, uint256 upPrice, uint256 downPrice)
    {
        Book storage b = _books[slot];
        if (!b.cleared || b.activatedWh == 0) return (0, 0, 0, 0);
        if (b.up) return (b.activatedWh, 0, b.price, 0);
        return (0, b.activatedWh, 0, b.price);
    }

    /// @inheritdoc IIntradayMarket
    function offerOf(uint32 slot, address account) external view returns (Offer memory) {
        return _offers[slot][account];
    }

    /// @inheritdoc IIntradayMarket
    function forecastOf(uint32 slot, address account) external view returns (bool set, int256 deviationWh) {
        Forecast storage f = _forecasts[slot][account];
        return (f.set, f.deviationWh);
    }

    /// @inheritdoc IIntradayMarket
    function book(uint32 slot) external view returns (BookView memory) {
        Book storage b = _books[slot];
        return BookView({
            size: b.size,
            cleared: b.cleared,
            imbalanceWh: b.imbalanceWh,
            up: b.up,
            price: b.price,
            activatedWh: b.activatedWh,
            escrow: b.escrow
        });
    }

    /// @inheritdoc IIntradayMarket
    function window(uint32 slot) public view returns (uint256 opensAt, uint256 closesAt) {
        uint256 startsAt = uint256(slot) * slotSeconds;
        uint256 hourStart = (startsAt / 1 hours) * 1 hours;
        opensAt = hourStart - openLeadSeconds;
        closesAt = startsAt - gateLeadSeconds;
    }

    // ---------------------------------------------------------------- internals

    /// @dev Returns the change of escrow (+ to collect, - to refund).
    function _place(address account, OfferInput calldata input) private returns (int256 delta) {
        _checkWindow(input.slot);
        if (input.qtyWh == 0) revert OfferZeroQuantity();
        if (input.qtyWh > MAX_OFFER_WH) revert OfferQuantityTooLarge(input.qtyWh, MAX_OFFER_WH);
        if (input.price < priceFloor || input.price > priceCap) revert OfferPriceOutOfBounds(input.price, priceFloor, priceCap);
        Offer storage o = _offers[input.slot][account];
        Book storage b = _books[input.slot];
        uint256 before;
        if (o.placed) {
            if (o.qtyWh > 0 && o.isUp != input.isUp) revert OfferDirectionChanged(account, input.slot);
            before = o.isUp ? 0 : _escrowOf(o.qtyWh, o.price);
        } else {
            if (b.size >= MAX_BOOK_SIZE) revert OfferBookFull(input.slot, MAX_BOOK_SIZE);
            o.placed = true;
            o.index = b.size;
            b.size += 1;
        }
        o.isUp = input.isUp;
        o.qtyWh = input.qtyWh;
        o.price = input.price;
        uint256 escrow = input.isUp ? 0 : _escrowOf(input.qtyWh, input.price);
        b.escrow = uint96(b.escrow + escrow - before);
        totalEscrow = totalEscrow + escrow - before;
        delta = int256(escrow) - int256(before);
        emit OfferPlaced(account, input.slot, input.isUp, input.qtyWh, input.price, escrow);
    }

    /// @dev Walks one sorted side, activating until `need` is covered.
    function _activate(Offer[] memory side, uint256 need, uint256[] memory act) private pure returns (uint256 volume, uint256 price) {
        for (uint256 k = 0; k < side.length && volume < need; ++k) {
            uint256 take = Math.min(side[k].qtyWh, need - volume);
            if (take == 0) continue;
            act[k] = take;
            volume += take;
            price = side[k].price;
        }
    }

    function _load(uint32 slot, address[] calldata accounts, bool upSide, uint256[] memory seen)
        private
        view
        returns (Offer[] memory offers)
    {
        offers = new Offer[](accounts.length);
        for (uint256 k = 0; k < accounts.length; ++k) {
            Offer memory o = _offers[slot][accounts[k]];
            if (!o.placed || o.isUp != upSide) revert BalancingWrongOffer(accounts[k]);
            uint256 word = o.index >> 8;
            uint256 bit = 1 << (o.index & 255);
            if (seen[word] & bit != 0) revert BalancingWrongOffer(accounts[k]);
            seen[word] |= bit;
            if (k > 0) {
                Offer memory prev = offers[k - 1];
                bool better = upSide ? prev.price < o.price : prev.price > o.price;
                if (!better && (prev.price != o.price || prev.index > o.index)) revert BalancingNotSorted(upSide, k);
            }
            offers[k] = o;
        }
    }

    function _checkAgent(address account) private view {
        (address meterKey, IParticipantRegistry.Kind kind, IParticipantRegistry.Status status) = registry.signerOf(account);
        if (msg.sender != account && msg.sender != meterKey) revert OfferNotAgent(account, msg.sender);
        if (status != IParticipantRegistry.Status.Active || kind == IParticipantRegistry.Kind.SlackUnit) {
            revert OfferNotAllowed(account);
        }
    }

    function _checkWindow(uint32 slot) private view {
        (uint256 opensAt, uint256 closesAt) = window(slot);
        if (block.timestamp < opensAt || block.timestamp >= closesAt) revert BalancingWindowClosed(slot, opensAt, closesAt);
    }

    function _escrowOf(uint256 qtyWh, uint256 price) private pure returns (uint256) {
        return Math.ceilDiv(qtyWh * price, 1000);
    }

    function _setBounds(uint256 floor_, uint256 cap_) private {
        if (floor_ == 0 || floor_ > cap_ || cap_ > MAX_PRICE) revert BalancingBadBounds(floor_, cap_);
        priceFloor = uint48(floor_);
        priceCap = uint48(cap_);
        emit BoundsSet(floor_, cap_);
    }
}
