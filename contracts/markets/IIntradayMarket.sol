// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/**
 * @title IIntradayMarket
 * @notice The intra-day balancing market, one hour ahead. See IntradayMarket.
 */
interface IIntradayMarket {
    /// @notice A flexibility offer: upward (more generation or less consumption, the participant
    /// sells) or downward (more consumption or less generation, the participant buys).
    struct Offer {
        bool isUp;
        uint40 qtyWh;
        uint48 price; // token base units per kWh: the least an upward offer takes, the most a downward one pays
        uint32 index; // position in the slot's book, fixed at first placement: the time priority
        uint40 activatedWh;
        bool placed;
    }

    struct OfferInput {
        uint32 slot;
        bool isUp;
        uint40 qtyWh;
        uint48 price;
    }

    /// @notice A balancing clearing computed off chain: every offer of the slot, sorted, and the result.
    /// @dev `ups` by price ascending, `downs` by price descending, ties by book index ascending.
    struct Clearing {
        uint32 slot;
        address[] ups;
        address[] downs;
        uint40[] upActivationsWh;
        uint40[] downActivationsWh;
        uint48 price;
        uint64 volumeWh;
    }

    struct BookView {
        uint32 size;
        bool cleared;
        int256 imbalanceWh;
        bool up;
        uint48 price;
        uint64 activatedWh;
        uint256 escrow;
    }

    /// @dev The quantity was zero.
    error OfferZeroQuantity();
    /// @dev `slot`'s book holds `max` offers already, as many as one clearing transaction can verify.
    error OfferBookFull(uint32 slot, uint256 max);
    /// @dev `price` is outside the regulator's bounds [`floor`, `cap`].
    error OfferPriceOutOfBounds(uint256 price, uint256 floor, uint256 cap);
    /// @dev The balancing window of `slot` is [`opensAt`, `closesAt`).
    error BalancingWindowClosed(uint32 slot, uint256 opensAt, uint256 closesAt);
    /// @dev `account` is not an active participant (unknown, suspended, or the slack unit).
    error OfferNotAllowed(address account);
    /// @dev `caller` is neither `account` nor its registered meter agent.
    error OfferNotAgent(address account, address caller);
    /// @dev The escrow of `needed` base units exceeds the allowance `allowance` given to the market.
    error OfferInsufficientAllowance(uint256 needed, uint256 allowance);
    /// @dev An offer cannot change direction; cancel it and place a new one.
    error OfferDirectionChanged(address account, uint32 slot);
    /// @dev `account` has no offer in `slot`.
    error OfferNotFound(address account, uint32 slot);
    /// @dev `slot` can be cleared only from its gate closure `closesAt` until it starts at `startsAt`.
    error BalancingClearingWindow(uint32 slot, uint256 closesAt, uint256 startsAt);
    /// @dev `slot` is cleared already.
    error BalancingAlreadyCleared(uint32 slot);
    /// @dev The clearing lists `given` offers, the book has `expected`.
    error BalancingIncomplete(uint256 given, uint256 expected);
    /// @dev `account` is listed twice, has no offer in the slot, or is on the wrong side.
    error BalancingWrongOffer(address account);
    /// @dev The list is not sorted at position `position` of the up (or down) side.
    error BalancingNotSorted(bool upSide, uint256 position);
    /// @dev The activation list lengths differ from the offer lists.
    error BalancingLengthMismatch();
    /// @dev The claimed price or volume is not the auction's.
    error BalancingWrongResult(uint256 expectedPrice, uint256 givenPrice, uint256 expectedVolumeWh, uint256 givenVolumeWh);
    /// @dev The activation of `account` should be `expected`, not `given`.
    error BalancingWrongActivation(address account, uint256 expected, uint256 given);
    /// @dev `qtyWh` is above the largest offer `max`.
    error OfferQuantityTooLarge(uint256 qtyWh, uint256 max);
    /// @dev Price bounds must satisfy 0 < floor <= cap <= 2^28.
    error BalancingBadBounds(uint256 floor, uint256 cap);
    /// @dev An address that must be set was zero.
    error BalancingZeroAddress();

    /// @notice `account` expects to deviate `deviationWh` from its schedule in `slot` (forecast minus schedule).
    event ForecastSubmitted(address indexed account, uint32 indexed slot, int256 forecastWh, int256 deviationWh);
    /// @notice `account` placed or changed its flexibility offer in `slot`; `escrow` is held for a downward one.
    event OfferPlaced(address indexed account, uint32 indexed slot, bool isUp, uint256 qtyWh, uint256 price, uint256 escrow);
    /// @notice `account` cancelled its offer in `slot` and got `refund` back.
    event OfferCancelled(address indexed account, uint32 indexed slot, uint256 refund);
    /// @notice `slot`'s expected imbalance `imbalanceWh` was covered by `activatedWh` of flexibility in direction `up`, at `price`.
    event BalancingCleared(uint32 indexed slot, int256 imbalanceWh, bool up, uint256 activatedWh, uint256 price, address clearer);
    /// @notice `account`'s offer in `slot` was activated for `activatedWh` (> 0); `refund` of its escrow went back.
    /// Offers not activated get no event: a downward offer's full refund shows as a Transfer.
    event OfferActivated(address indexed account, uint32 indexed slot, bool isUp, uint256 activatedWh, uint256 refund);
    /// @notice The regulator set the price bounds of offers.
    event BoundsSet(uint256 floor, uint256 cap);

    /// @notice Records `account`'s updated net-energy forecasts for consecutive slots from `firstSlot`.
    /// Sent by the account or its meter agent, inside each slot's balancing window.
    function submitForecasts(address account, uint32 firstSlot, int32[] calldata netWh) external;

    /// @notice Places or changes flexibility offers for `account` (sent by it or its meter agent);
    /// downward offers escrow their worst case from `account`.
    function placeOffers(address account, OfferInput[] calldata offers) external;

    /// @notice Cancels `account`'s offer in `slot` (sent by it or its meter agent), refunding any escrow.
    function cancelOffer(address account, uint32 slot) external;

    /// @notice Verifies and applies a balancing clearing computed off chain. Anyone may submit one; only the correct one is accepted.
    function clear(Clearing calldata clearing) external;

    /// @notice Sets the price bounds of offers. Only the regulator.
    function setBounds(uint256 floor, uint256 cap) external;

    /// @notice `account`'s activation in `slot` (+ downward: it buys, - upward: it sells) and the price; zero before clearing.
    function activationOf(uint32 slot, address account) external view returns (int256 activatedWh, uint256 price);

    /// @notice A slot's balancing result: activated energy up and down, and their prices.
    function slotResult(uint32 slot) external view returns (uint256 upWh, uint256 downWh, uint256 upPrice, uint256 downPrice);

    function offerOf(uint32 slot, address account) external view returns (Offer memory);

    function forecastOf(uint32 slot, address account) external view returns (bool set, int256 deviationWh);

    function book(uint32 slot) external view returns (BookView memory);

    /// @notice The balancing window of `slot`: forecasts and offers from `opensAt` until `closesAt` (gate closure).
    function window(uint32 slot) external view returns (uint256 opensAt, uint256 closesAt);
}
