// SPDX-License-Identifier: MIT
pragma solidity ^0.8.28;

/**
 * @title ISettlement
 * @notice Billing deposits in escrow and the settlement of every 15-minute slot. See Settlement.
 */
interface ISettlement {
    /// @notice A slot's totals and prices. `pool` is what escrow holds for the slot while it is open.
    struct SlotView {
        uint64 demandWh;
        uint64 supplyWh;
        uint64 localWh;
        uint32 readings;
        uint32 billed;
        bool priced;
        bool closed;
        uint64 price;
        uint64 feedInPrice;
        uint64 retailPrice;
        int256 pool;
        uint64 upWh;
        uint64 downWh;
        uint64 upPrice;
        uint64 downPrice;
    }

    /// @notice A participant's metering and billing state.
    struct AccountView {
        uint32 lastSlot;
        bool billed;
        uint64 importWh;
        uint64 exportWh;
        int64 deviationWh;
        uint256 earned;
        uint256 deposit;
        uint256 debt;
    }

    /// @dev An address that must be set was zero.
    error SettlementZeroAddress();
    /// @dev Prices must satisfy 0 < feedIn <= retail <= 2^28.
    error SettlementBadPrices(uint256 feedInPrice, uint256 retailPrice);
    /// @dev `account` is not a registered participant.
    error SettlementNotRegistered(address account);
    /// @dev `slot` can be settled only after its reading deadline `deadline`.
    error SettlementSlotNotFinal(uint32 slot, uint256 deadline);
    /// @dev Asked to withdraw `requested`, but only `available` is free of pending bills.
    error SettlementWithdrawExceedsFree(uint256 requested, uint256 available);
    /// @dev The amount was zero.
    error SettlementZeroAmount();
    /// @dev A deposit would exceed the 64-bit deposit field.
    error SettlementDepositTooLarge(address account, uint256 deposit);
    /// @dev The market has no slack unit registered, so slots cannot be closed nor debts repaid.
    error SettlementNoSlackUnit();
    /// @dev `slot` is closed: nothing can be paid into it any more.
    error SettlementSlotClosed(uint32 slot);
    /// @dev A balancing market needs a day-ahead market: its activations join the day-ahead schedules.
    error SettlementNoScheduleSource();

    /// @notice `account` (funded by `from`) deposited `amount` into escrow.
    event Deposited(address indexed account, address indexed from, uint256 amount);
    /// @notice `account` withdrew `amount` from escrow.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice `account` repaid `amount` of its debt, to the slack unit that had covered it.
    event DebtRepaid(address indexed account, uint256 amount, uint256 remainingDebt);
    /// @notice `account` was billed for `slot`: its deviation from schedule (+ used more), what its
    /// scheduled sales earned at the markets' prices, and the deviation's amount (+ paid by it, - paid to it).
    event Billed(address indexed account, uint32 indexed slot, int256 deviationWh, uint256 scheduledEarnings, int256 amount, uint256 shortfall);
    /// @notice `account` could not pay `shortfall` of its bill for `slot`; it now owes `totalDebt`.
    event ParticipantInDebt(address indexed account, uint32 indexed slot, uint256 shortfall, uint256 totalDebt);
    /// @notice The price of `slot` was fixed from its demand and supply.
    event SlotPriced(uint32 indexed slot, uint256 price, uint256 demandWh, uint256 supplyWh);
    /// @notice Every reading of `slot` is billed; the slack unit took the residual `slackAmount` (+ received).
    event SlotClosed(
        uint32 indexed slot,
        uint256 localWh,
        uint256 slackSuppliedWh,
        uint256 slackAbsorbedWh,
        int256 slackAmount
    );
    /// @notice `market` paid `amount` for the scheduled energy of `slot` into its pool.
    event SchedulePaid(uint32 indexed slot, address indexed market, uint256 amount);
    /// @notice Schedules now come from these markets (zero: none).
    event MarketsSet(address indexed dayAhead, address indexed intraday);
    /// @notice The regulator set the feed-in and retail prices (token base units per kWh).
    event PricesSet(uint256 feedInPrice, uint256 retailPrice);

    /// @notice Deposits `amount` for the caller (after `approve`).
    function deposit(uint256 amount) external;

    /// @notice Deposits `amount` for `account`, paid by the caller (after `approve`).
    function depositFor(address account, uint256 amount) external;

    /// @notice Deposits `amount` for the caller with an EIP-2612 permit instead of `approve`.
    function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s) external;

    /// @notice Withdraws `amount` of the caller's deposit that no pending bill may need, to its
    /// wallet. Earnings from selling energy are paid into the deposit; this takes them home.
    function withdraw(uint256 amount) external;

    /// @notice Bills `slot` for those of `accounts` whose reading of it is not billed yet (others
    /// are skipped), after its reading deadline, and closes it once every reading is billed. Anyone.
    function settle(uint32 slot, address[] calldata accounts) external;

    /// @notice Sets the feed-in and retail prices. Only the regulator.
    function setPrices(uint256 feedInPrice, uint256 retailPrice) external;

    /// @notice The state of `slot`.
    function slotState(uint32 slot) external view returns (SlotView memory);

    /// @notice The state of `account`.
    function accountState(address account) external view returns (AccountView memory);

    /// @notice What `account` can withdraw now.
    function withdrawable(address account) external view returns (uint256);
}
